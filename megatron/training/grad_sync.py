"""Data-parallel gradient averaging on CPU ranks of one machine, through shared memory.

Without ZeRO, DeepSpeed's plain engine averages the gradients after backward by copying them
all into one flat buffer, all-reducing it with gloo (loopback TCP, even between processes of
one machine) and copying the result back. For a 70M-parameter model on two CPU ranks that was
0.5 s of a 9 s step.

:func:`use_shared_memory` hands that step to a
:class:`~megatron.parallel.shm_allreduce.ShmAverager`, which reads the gradients in place. The
result is DeepSpeed's (a sum over the ranks, then a multiplication by ``1 / size``; bit for
bit with two ranks); only the transport differs. It applies where that holds: CPU ranks that
share a machine, the plain engine at stage 0, gradients averaged in their own dtype with no
pre-division, no mixture of experts, and an optimizer that reads ``param.grad`` (DeepSpeed's
BF16 optimizer keeps fp32 gradients of its own). Everything else keeps DeepSpeed's path.

``MEGATRON_DP_REDUCE=deepspeed`` keeps DeepSpeed's path everywhere, for measuring the
difference or ruling this out.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from megatron.parallel.groups import Group
from megatron.parallel.shm_allreduce import ShmAverager

LOG = logging.getLogger(__name__)

ENV_OVERRIDE = "MEGATRON_DP_REDUCE"


def why_not_shared_memory(engine: Any, dp: Group) -> str | None:
    """The reason DeepSpeed must keep reducing this engine's gradients; None if it need not."""
    choice = os.environ.get(ENV_OVERRIDE, "shm")
    if choice not in ("shm", "deepspeed"):
        raise ValueError(f"{ENV_OVERRIDE}={choice!r}: expected 'shm' or 'deepspeed'")
    dtypes = {p.dtype for p in engine.module.parameters() if p.requires_grad}
    checks = (
        (choice == "deepspeed", f"{ENV_OVERRIDE}=deepspeed"),
        (dp.size < 2, "one data-parallel rank"),
        (torch.device(engine.device).type != "cpu", "not a CPU run"),
        (bool(engine.zero_optimization()), "ZeRO reduces the gradients itself"),
        (bool(getattr(engine, "pipeline_parallelism", False)), "the pipeline engine"),
        (hasattr(engine.optimizer, "get_grads_for_reduction"), "an optimizer with own grads"),
        (bool(engine.has_moe_layers), "mixture-of-experts layers"),
        (not engine.gradient_average, "gradients summed, not averaged"),
        (engine.gradient_predivide_factor() != 1.0, "gradient_predivide_factor"),
        (not engine.postscale_gradients(), "prescale_gradients"),
        (dtypes != {engine.communication_data_type}, "communication_data_type"),
    )
    return next((reason for failed, reason in checks if failed), None)


def use_shared_memory(engine: Any, dp: Group,
                      windows: ShmAverager | None = None) -> ShmAverager | None:
    """Average this engine's gradients through shared memory where that is exact.

    Collective over the data-parallel group (every member gets the same answer). Replaces
    ``engine.allreduce_gradients``, which the engine calls after every backward and which
    reduces at accumulation boundaries only. ``windows``: an averager of the gradients'
    dtype the run already holds (the sharded optimizer's), used instead of a new one.
    """
    reason = why_not_shared_memory(engine, dp)
    averager = None
    if reason is None:
        dtype = engine.communication_data_type
        reuse = windows is not None and windows.window.dtype == dtype
        averager = windows if reuse else ShmAverager.create(dp.group, dp.ranks, dp.rank, dtype)
        reason = "the data-parallel ranks share no /dev/shm" if averager is None else None
    if averager is None:
        LOG.debug("data-parallel gradients averaged by DeepSpeed: %s", reason)
        return None
    params = _unique_trainable(engine.module)

    def allreduce_gradients(bucket_size: int | None = None) -> None:
        if not engine.is_gradient_accumulation_boundary():
            return
        for p in params:
            if p.grad is None:  # unused this step: DeepSpeed reduces zeros for it too
                p.grad = torch.zeros_like(p)
        averager.average_([p.grad for p in params])

    engine.allreduce_gradients = allreduce_gradients
    return averager


def _unique_trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in module.parameters():
        if p.requires_grad and p.numel() > 0 and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
