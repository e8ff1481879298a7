"""Parameter norms, per-parameter gradient norms and the gradient noise scale, for logging.

GPT-NeoX keys: ``log_param_norm`` logs ``parameter_norms/<name>`` for every parameter,
``log_grad_norm`` logs ``gradient_norms/<name>``, and ``log_gradient_noise_scale`` logs
``train/noise_scale`` (McCandlish et al. 2018, arXiv:1812.06162). We add the global
``train/param_norm`` next to the ``train/grad_norm`` the step already reports.

Every value is the norm of the *full* tensor of one model replica, whatever the layout.
The counting rule is the one ``grad_clip`` uses for the clipped norm: a tensor-parallel
shard counts on every tensor rank (the squares of the shards add up to the full tensor's),
a replicated tensor only on tensor rank 0, and a pipeline-tied copy that DeepSpeed marks
``ds_pipe_replicated`` not at all (its owner stage counts it). Data-parallel replicas hold
the same values, so only data-parallel rank 0 contributes. ZeRO-3 parameters are gathered
with DeepSpeed's ``safe_get_full_*`` helpers first, which every rank must call in order.

Gradients are read just before DeepSpeed's optimizer step (``_take_model_step``): they are
then reduced over data-parallel ranks but not yet clipped, and still present (the step
zeroes them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from megatron.parallel import collective_device
from megatron.training.grad_clip import counted_once
from megatron.utils.noise_scale import NoiseScaleTracker, estimate_noise_scale

LOG = logging.getLogger(__name__)

PARAM_NORM = "train/param_norm"
NOISE_SCALE = "train/noise_scale"
PARAM_PREFIX = "parameter_norms/"
GRAD_PREFIX = "gradient_norms/"

Named = Iterable[tuple[str, torch.Tensor | None, torch.nn.Parameter]]


def local_squares(named: Named, tp_rank: int, dp_rank: int = 0) -> dict[str, float]:
    """Squared norms of the tensors this rank counts, by name (None tensors are skipped).

    Args:
        named: ``(name, tensor, parameter)`` triples; the parameter carries the TP/PP marks.
        tp_rank: this rank's tensor-parallel rank.
        dp_rank: this rank's data-parallel rank.
    """
    out: dict[str, float] = {}
    for name, tensor, param in named:
        if tensor is not None and counted_once(param, tp_rank, dp_rank):
            out[name] = float(tensor.detach().float().pow(2).sum())
    return out


def merge_squares(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Add the squared norms that several ranks hold under the same name (TP shards)."""
    total: dict[str, float] = {}
    for part in parts:
        for name, value in part.items():
            total[name] = total.get(name, 0.0) + value
    return total


def gather_squares(local: dict[str, float]) -> dict[str, float]:
    """Merge every rank's squares; each rank gets the same full table (pipeline included)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(local)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return merge_squares(parts)


def norm_metrics(squares: Mapping[str, float], prefix: str, total: str | None) -> dict[str, float]:
    """``{prefix + name: norm}`` for every tensor, plus ``total`` as the global L2 norm."""
    out = {f"{prefix}{name}": math.sqrt(sq) for name, sq in squares.items()}
    if total is not None:
        out[total] = math.sqrt(sum(squares.values()))
    return out


def full_param(param: torch.nn.Parameter) -> torch.Tensor:
    """The whole parameter; ZeRO-3 keeps only a partition, so it is gathered (collective)."""
    if hasattr(param, "ds_id"):
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(param)
    return param.data


def full_grad(param: torch.nn.Parameter) -> torch.Tensor | None:
    """The reduced gradient of ``param``, wherever DeepSpeed keeps it (ZeRO, bf16)."""
    from deepspeed.utils import safe_get_full_grad

    return safe_get_full_grad(param)


def before_optimizer_step(engine: Any, hook: Callable[[], None]) -> None:
    """Run ``hook`` inside every optimizer step, before clipping and the update.

    ``_take_model_step`` is where both DeepSpeed engines (plain and pipeline) clip, step
    and zero the gradients, once per global batch.
    """
    original = engine._take_model_step

    def step(*args: Any, **kwargs: Any) -> Any:
        hook()
        return original(*args, **kwargs)

    engine._take_model_step = step


class NoiseScaleLogger:
    """GPT-NeoX's estimator: ``B_small`` is one global batch, ``B_big`` is ``n_batches``
    consecutive batches whose gradients are averaged in a buffer (``cpu_offload`` keeps it
    in host memory). The two squared norms then give ``B_simple`` (see ``noise_scale``).

    Args:
        batch_size: samples per global batch (``train_batch_size``).
        n_batches: ``gradient_noise_scale_n_batches``; at least 2.
        cpu_offload: ``gradient_noise_scale_cpu_offload``.
        beta: EMA weight of the past, as in GPT-NeoX.
    """

    def __init__(
        self, batch_size: int, n_batches: int, cpu_offload: bool = False, beta: float = 0.99
    ) -> None:
        if n_batches < 2:
            raise ValueError(
                f"gradient_noise_scale_n_batches must be at least 2 (one small and a larger "
                f"batch are compared), got {n_batches}"
            )
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.cpu_offload = cpu_offload
        self.tracker = NoiseScaleTracker(beta)
        self.buffer: dict[str, torch.Tensor] = {}
        self.seen = 0
        self.value: float | None = None

    def update(self, grads: Mapping[str, torch.Tensor]) -> float | None:
        """Add one step's counted gradients; every ``n_batches`` steps, re-estimate.

        Returns the smoothed noise scale, or None before the first estimate. A step with a
        non-finite gradient on any rank is dropped (an fp16 overflow), as GPT-NeoX does.
        """
        small = _all_sum(sum(float(g.float().pow(2).sum()) for g in grads.values()))
        if not math.isfinite(small):
            return self.value
        for name, grad in grads.items():
            g = grad.detach().float().to("cpu" if self.cpu_offload else grad.device)
            if name in self.buffer:
                self.buffer[name] += g
            else:
                self.buffer[name] = g.clone()
        self.seen += 1
        if self.seen % self.n_batches == 0:
            big = _all_sum(
                sum(float((b / self.n_batches).pow(2).sum()) for b in self.buffer.values())
            )
            self.buffer = {}
            large = self.batch_size * self.n_batches
            estimate = estimate_noise_scale(small, big, self.batch_size, large)
            self.value = self.tracker.update(estimate)
        return self.value


def _all_sum(value: float) -> float:
    """Sum a float over all ranks (each replica-wide quantity is counted on one rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return float(t.item())


class NormLogger:
    """The ``log_param_norm`` / ``log_grad_norm`` / ``log_gradient_noise_scale`` metrics.

    The loop calls ``before_step(iteration, will_log)`` before each step and
    ``metrics()`` when it logs; gradients are captured inside the optimizer step.
    """

    def __init__(
        self,
        engine: Any,
        *,
        tp_rank: int,
        dp_rank: int,
        param_norm: bool = False,
        grad_norm: bool = False,
        noise: NoiseScaleLogger | None = None,
    ) -> None:
        self.engine = engine
        self.tp_rank, self.dp_rank = tp_rank, dp_rank
        self.param_norm, self.grad_norm, self.noise = param_norm, grad_norm, noise
        self._want_grads = False
        self._grad_squares: dict[str, float] | None = None
        if grad_norm or noise is not None:
            before_optimizer_step(engine, self._on_step)

    @classmethod
    def from_run(cls, run: Any) -> NormLogger | None:
        """Built from the GPT-NeoX keys; None when none of them is on."""
        a = run.args
        noise = None
        if a.log_gradient_noise_scale:
            noise = NoiseScaleLogger(
                a.train_batch_size,
                a.gradient_noise_scale_n_batches,
                a.gradient_noise_scale_cpu_offload,
            )
        if not (a.log_param_norm or a.log_grad_norm or noise):
            return None
        return cls(
            run.engine,
            tp_rank=run.groups.tp.rank,
            dp_rank=run.groups.dp.rank,
            param_norm=a.log_param_norm,
            grad_norm=a.log_grad_norm,
            noise=noise,
        )

    def before_step(self, will_log: bool) -> None:
        """Say whether the coming step is a logged one (per-parameter gradients are kept)."""
        self._want_grads = will_log and self.grad_norm
        self._grad_squares = None

    def _named_grads(self) -> list[tuple[str, torch.Tensor | None, torch.nn.Parameter]]:
        # Every rank asks for every gradient in the same order: under ZeRO it is collective.
        return [(n, full_grad(p), p) for n, p in self.engine.module.named_parameters()]

    def _on_step(self) -> None:
        named = self._named_grads()
        if self._want_grads:
            self._grad_squares = gather_squares(local_squares(named, self.tp_rank, self.dp_rank))
        if self.noise is not None:
            counted = {
                n: g for n, g, p in named
                if g is not None and counted_once(p, self.tp_rank, self.dp_rank)
            }
            self.noise.update(counted)

    def metrics(self) -> dict[str, float]:
        """The values for this log line (call on every rank: it may communicate)."""
        out: dict[str, float] = {}
        if self.param_norm:
            named = [(n, full_param(p), p) for n, p in self.engine.module.named_parameters()]
            squares = gather_squares(local_squares(named, self.tp_rank, self.dp_rank))
            out.update(norm_metrics(squares, PARAM_PREFIX, PARAM_NORM))
        if self._grad_squares is not None:
            out.update(norm_metrics(self._grad_squares, GRAD_PREFIX, None))
        if self.noise is not None and self.noise.value is not None:
            out[NOISE_SCALE] = self.noise.value
        return out
