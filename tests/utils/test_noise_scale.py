"""Gradient noise scale (arXiv:1812.06162, appendix A.1) against a hand-solved example."""

import math

import pytest

from megatron.utils.noise_scale import NoiseScaleTracker, estimate_noise_scale


def test_recovers_known_gradient_and_noise() -> None:
    # True |G|^2 = 1 and tr(Sigma) = 3, so E|G_B|^2 = 1 + 3/B:
    # batch 1 -> 4.0, batch 4 -> 1.75. Then |G|^2 = (4*1.75 - 1*4) / 3 = 1,
    # tr(Sigma) = (4 - 1.75) / (1 - 1/4) = 3, B_simple = 3.
    est = estimate_noise_scale(4.0, 1.75, small_batch=1, large_batch=4)
    assert est.grad_sq == pytest.approx(1.0)
    assert est.trace_cov == pytest.approx(3.0)
    assert est.b_simple == pytest.approx(3.0)


def test_batch_order_is_validated() -> None:
    with pytest.raises(ValueError, match="small_batch=8, large_batch=8"):
        estimate_noise_scale(1.0, 1.0, small_batch=8, large_batch=8)


def test_tracker_smooths_numerator_and_denominator_separately() -> None:
    tracker = NoiseScaleTracker(beta=0.5)
    assert math.isnan(tracker.noise_scale)
    # First estimate: |G|^2 = 1, tr = 3 (as above) -> 3.
    assert tracker.update(estimate_noise_scale(4.0, 1.75, 1, 4)) == pytest.approx(3.0)
    # Second: |G|^2 = 2, tr = 4 (batch 1 -> 6, batch 2 -> 4). EMAs: 1.5 and 3.5 -> 7/3,
    # not the mean of the ratios (2.5).
    assert tracker.update(estimate_noise_scale(6.0, 4.0, 1, 2)) == pytest.approx(7 / 3)
