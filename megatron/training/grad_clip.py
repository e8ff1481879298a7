"""Global gradient norm and clipping for fp32 runs without ZeRO, pipeline included.

DeepSpeed's own fp32 clipping (`deepspeed.runtime.utils.clip_grad_norm_`) counts a
replicated parameter only on model-parallel rank 0 of the pipe x tensor group, so on a
pipeline every later stage's norms, biases and unsharded weights are left out and the clip
differs from one process. Here every parameter is counted exactly once: sharded ones on
every tensor rank, replicated ones on tensor rank 0, and a tied weight only on the stage
that owns it (DeepSpeed marks the other copies `ds_pipe_replicated`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from deepspeed.runtime.utils import is_model_parallel_parameter

from megatron.parallel import collective_device


def counted_once(param: torch.nn.Parameter, tp_rank: int, dp_rank: int = 0) -> bool:
    """Whether this rank's copy of `param` counts towards a replica-wide norm."""
    if dp_rank != 0 or getattr(param, "ds_pipe_replicated", False):
        return False
    return tp_rank == 0 or is_model_parallel_parameter(param)


def global_grad_norm(
    params: Iterable[torch.nn.Parameter], tp_rank: int, model_group: object | None
) -> torch.Tensor:
    """L2 norm of all gradients of one model replica (summed over pipe x tensor ranks)."""
    grads = [p.grad.detach() for p in params if p.grad is not None and counted_once(p, tp_rank)]
    return replica_norm(grads, model_group)


def replica_norm(grads: list[torch.Tensor], model_group: object | None) -> torch.Tensor:
    """L2 norm of ``grads`` (this rank's counted-once share) summed over ``model_group``."""
    # One multi-tensor pass (fp32 accumulation) instead of a pow and a sum per parameter.
    total = (torch.nn.utils.get_total_norm(grads).float() ** 2 if grads
             else torch.zeros((), dtype=torch.float32, device=collective_device()))
    if model_group is not None and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=model_group)
    return total.sqrt()


def clip_grads_(params: Iterable[torch.nn.Parameter], max_norm: float, norm: torch.Tensor) -> None:
    """Scale every gradient by min(1, max_norm / norm), in place."""
    # torch's multi-tensor clip: the same min(1, max_norm / (norm + 1e-6)) in one pass.
    torch.nn.utils.clip_grads_with_norm_(list(params), max_norm, norm)
