"""Gradient noise scale (McCandlish et al. 2018, arXiv:1812.06162, appendix A.1).

The "simple" noise scale ``B_simple = tr(Sigma) / |G|^2`` estimates the batch size beyond
which larger batches stop buying proportionally faster training. It is measured from the
squared norms of the same gradient averaged over a small and a large batch: because
``E|G_B|^2 = |G|^2 + tr(Sigma)/B``, two batch sizes give two equations in two unknowns.
Each single estimate is noisy, so :class:`NoiseScaleTracker` smooths ``|G|^2`` and
``tr(Sigma)`` separately with an exponential moving average before taking the ratio,
as the paper recommends.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NoiseScaleEstimate:
    """Unbiased estimates from one small/large pair.

    Attributes:
        grad_sq: estimate of the true gradient's squared norm ``|G|^2``.
        trace_cov: estimate of the per-example gradient covariance trace ``tr(Sigma)``.
    """

    grad_sq: float
    trace_cov: float

    @property
    def b_simple(self) -> float:
        """``tr(Sigma) / |G|^2``; infinite when the gradient estimate is not positive."""
        return self.trace_cov / self.grad_sq if self.grad_sq > 0 else float("inf")


def estimate_noise_scale(
    small_sq_norm: float, large_sq_norm: float, small_batch: int, large_batch: int
) -> NoiseScaleEstimate:
    """Solve the two-batch equations for ``|G|^2`` and ``tr(Sigma)``.

    Args:
        small_sq_norm: ``|G_small|^2``, the squared norm of the gradient averaged over
            ``small_batch`` examples (for example one data-parallel rank's micro batch).
        large_sq_norm: ``|G_large|^2`` over ``large_batch`` examples (the all-reduced batch).
        small_batch: examples behind ``small_sq_norm``.
        large_batch: examples behind ``large_sq_norm``; must exceed ``small_batch``.

    Returns:
        The two unbiased estimates; their ratio is ``B_simple``.
    """
    if not 0 < small_batch < large_batch:
        raise ValueError(
            f"need 0 < small_batch < large_batch, got small_batch={small_batch}, "
            f"large_batch={large_batch}"
        )
    grad_sq = (large_batch * large_sq_norm - small_batch * small_sq_norm) / (
        large_batch - small_batch
    )
    trace_cov = (small_sq_norm - large_sq_norm) / (1.0 / small_batch - 1.0 / large_batch)
    return NoiseScaleEstimate(grad_sq=grad_sq, trace_cov=trace_cov)


class NoiseScaleTracker:
    """Exponential moving averages of ``|G|^2`` and ``tr(Sigma)``, and their ratio.

    Args:
        beta: weight of the past in each average (0.99 smooths over ~100 estimates).
    """

    def __init__(self, beta: float = 0.99) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self._grad_sq: float | None = None
        self._trace_cov: float | None = None

    def update(self, estimate: NoiseScaleEstimate) -> float:
        """Fold in one estimate and return the current smoothed ``B_simple``."""
        if self._grad_sq is None or self._trace_cov is None:
            self._grad_sq, self._trace_cov = estimate.grad_sq, estimate.trace_cov
        else:
            b = self.beta
            self._grad_sq = b * self._grad_sq + (1 - b) * estimate.grad_sq
            self._trace_cov = b * self._trace_cov + (1 - b) * estimate.trace_cov
        return self.noise_scale

    @property
    def noise_scale(self) -> float:
        """Smoothed ``B_simple``; NaN before the first update."""
        if self._grad_sq is None or self._trace_cov is None:
            return float("nan")
        return NoiseScaleEstimate(self._grad_sq, self._trace_cov).b_simple
