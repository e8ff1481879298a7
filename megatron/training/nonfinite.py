"""Skip optimizer updates whose gradients hold NaN or inf, on every rank at once.

DeepSpeed's fp16 loss scaler already skips overflowing steps; in fp32 and bf16 a NaN
gradient would be applied and ruin the weights. The guard wraps the optimizer's `step`
(the one DeepSpeed calls, whatever ZeRO stage or engine): it checks this rank's gradients,
agrees with all other ranks (a NaN may sit in another rank's shard or partition) and
leaves the parameters and optimizer state untouched when any rank saw one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from megatron.parallel import collective_device


def _local_grads_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """A 0-d bool tensor, on the gradients' device: no host sync per parameter (on a GPU a
    ``.cpu()`` per norm stalled the step once per parameter)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    norms = torch._foreach_norm(grads)
    return torch.isfinite(torch.stack([n.float() for n in norms])).all()


class NonFiniteGuard:
    """Wraps `optimizer.step`; `skipped_last` says whether the last update was withheld."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.skipped_last = False
        self._step: Callable[..., Any] = optimizer.step
        optimizer.step = self.step  # type: ignore[method-assign]

    def step(self, *args: Any, **kwargs: Any) -> Any:
        bad = (~_local_grads_finite(self.optimizer)).float().reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            bad = bad.to(collective_device())
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        finite = bad.item() == 0.0  # the one host sync of the check
        self.skipped_last = not finite
        return self._step(*args, **kwargs) if finite else None
