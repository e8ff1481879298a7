"""bf16 weights trained through fp32 master copies, without DeepSpeed's per-parameter wrapper.

For bf16 at ZeRO stage 0 without a pipeline, DeepSpeed wraps the optimizer in its
``FP16_UnfusedOptimizer``. Every step that wrapper checks each gradient for inf/NaN with an
``amin`` and an ``amax``, takes each gradient's norm, copies each to a new fp32 tensor,
multiplies them all by the loss scale (1.0 for bf16), steps, and copies the weights back; and
our non-finite guard took the norms once more. Profiled on the 19M benchmark shape (2 threads,
AMX host) that was 0.37 s of a 3.1 s step, and 0.7-0.8 s per rank with two 1-thread ranks.

:class:`MasterWeights` does the same update with one pass per job: fp32 gradient copies, one
multi-tensor norm (which is also the inf/NaN check: a non-finite gradient makes the norm
non-finite), a clip only when the norm is over the limit, the inner optimizer's step, and the
copy back. DeepSpeed then runs the engine as an fp32 one whose optimizer happens to keep bf16
model weights (see :func:`megatron.training.engine.build_run`); it still reads ``overflow``
(a skipped step, which also holds the LR schedule, as its own wrapper does) and
``_global_grad_norm`` from here.

Checkpoints keep DeepSpeed's layout for that wrapper (``optimizer_state_dict`` of the inner
optimizer, ``fp32_groups`` with the master weights, the loss-scale keys), so a stage-0 bf16
checkpoint written either way resumes with the other.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from megatron.training.grad_clip import counted_once, replica_norm
from megatron.training.optimizer_view import Groups, OptimizerView

OPTIMIZER_STATE_DICT = "optimizer_state_dict"  # DeepSpeed's key for the inner optimizer
ENV_OVERRIDE = "MEGATRON_BF16_OPTIMIZER"


def why_not_master_weights(precision: str, zero_stage: int, is_pipe: bool,
                           optimizer: Any) -> str | None:
    """Why DeepSpeed keeps a run's bf16 weights itself; None where :class:`MasterWeights` does.

    ``MEGATRON_BF16_OPTIMIZER=deepspeed`` keeps DeepSpeed's wrapper, for measuring the
    difference or ruling this out.
    """
    choice = os.environ.get(ENV_OVERRIDE, "ours")
    if choice not in ("ours", "deepspeed"):
        raise ValueError(f"{ENV_OVERRIDE}={choice!r}: expected 'ours' or 'deepspeed'")
    checks = (
        (precision != "bf16", f"precision {precision}"),
        (choice == "deepspeed", f"{ENV_OVERRIDE}=deepspeed"),
        (zero_stage > 0, "ZeRO keeps its own fp32 partitions"),
        (is_pipe, "the pipeline engine"),
        (not isinstance(optimizer, torch.optim.Optimizer), "DeepSpeed builds the optimizer"),
    )
    return next((reason for failed, reason in checks if failed), None)


def cast_parameters_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Parameters to ``dtype`` in place, buffers left alone, as DeepSpeed casts a bf16 model;
    each Parameter object survives (tied weights, optimizer groups)."""
    for param in model.parameters():
        param.data = param.data.to(dtype)


class MasterWeights(OptimizerView):
    """An optimizer over fp32 copies of low-precision parameters, with global-norm clipping.

    It is a ``torch.optim.Optimizer`` so DeepSpeed takes it as a client optimizer; its
    ``param_groups`` and ``state`` are the inner optimizer's (over the master copies), so LR
    schedules and DeepSpeed's ``get_lr`` see the real thing.

    Args:
        groups: param groups over the model's (bf16) parameters.
        build: builds the inner optimizer from the same groups over fp32 master copies.
        clip: the gradient-norm limit (``gradient_clipping``); 0 leaves gradients alone.
        tp_rank: this rank's tensor-parallel rank, so a replicated parameter counts once.
        model_group: the group whose ranks hold one model's shards (None: one rank).
    """

    def __init__(
        self,
        groups: Iterable[dict[str, Any]],
        build: Callable[[Groups], torch.optim.Optimizer],
        *,
        clip: float = 0.0,
        tp_rank: int = 0,
        model_group: Any = None,
    ) -> None:
        model_groups = [dict(g) for g in groups]
        self.fp32_groups = [[p.detach().to(torch.float32, copy=True).requires_grad_(True)
                             for p in g["params"]]  # a copy even of an fp32 parameter
                            for g in model_groups]
        self.pairs = [(p, m) for g, ms in zip(model_groups, self.fp32_groups, strict=True)
                      for p, m in zip(g["params"], ms, strict=True)]
        """(model parameter, fp32 master), group by group."""
        groups_ = zip(model_groups, self.fp32_groups, strict=True)
        self.inner = build([{**g, "params": ms} for g, ms in groups_])
        self.clip, self.tp_rank, self.model_group = clip, tp_rank, model_group
        self.overflow = False
        self._global_grad_norm: float | None = None
        self.steps = 0

    def viewed(self) -> torch.optim.Optimizer:
        return self.inner

    def __repr__(self) -> str:
        return f"MasterWeights({self.inner!r})"

    def _load_grads(self) -> None:
        """fp32 copies of the model's gradients on the masters (zeros where one is None,
        as DeepSpeed's wrapper does)."""
        for p, m in self.pairs:
            m.grad = torch.zeros_like(m) if p.grad is None else p.grad.float()

    def _norm(self) -> torch.Tensor:
        """The L2 norm of one model replica's fp32 gradients, on every model rank (whether a
        master counts is asked of its model parameter, which carries the TP marks)."""
        grads = [m.grad for p, m in self.pairs if counted_once(p, self.tp_rank)]
        return replica_norm(grads, self.model_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> bool:  # type: ignore[override]
        """One update; returns whether it was withheld for a non-finite gradient."""
        if closure is not None:
            raise ValueError("MasterWeights.step takes no closure")
        self.steps += 1
        self._load_grads()
        norm = float(self._norm())  # the step's one host sync
        self._global_grad_norm = norm
        self.overflow = not math.isfinite(norm)
        if not self.overflow:
            masters = [m for _, m in self.pairs]
            # grad_clip.clip_grads_ would multiply by 1.0 too; below the limit this skips
            # the pass over every gradient.
            if self.clip > 0 and norm + 1e-6 > self.clip:
                torch._foreach_mul_([m.grad for m in masters], self.clip / (norm + 1e-6))
            self.inner.step()
            torch._foreach_copy_([p.data for p, _ in self.pairs], masters)
        for _, m in self.pairs:
            m.grad = None
        return self.overflow

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the model's gradients (the masters hold none between steps)."""
        for p, _ in self.pairs:
            p.grad = None

    @torch.no_grad()
    def refresh_fp32_params(self) -> None:
        """Masters from the model's weights: after loading weights without optimizer state."""
        torch._foreach_copy_([m for _, m in self.pairs], [p.data for p, _ in self.pairs])

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """DeepSpeed's FP16_UnfusedOptimizer layout, with a fixed loss scale of 1."""
        return {"dynamic_loss_scale": False, "cur_scale": 1.0, "cur_iter": self.steps,
                OPTIMIZER_STATE_DICT: self.inner.state_dict(), "fp32_groups": self.fp32_groups}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any],  # type: ignore[override]
                        load_optimizer_states: bool = True) -> None:
        """Inner optimizer state (unless told not to) and the saved fp32 masters.

        Raises:
            ValueError: when the saved masters do not match this model's parameters.
        """
        saved = state_dict.get("fp32_groups")
        shapes = [[tuple(m.shape) for m in ms] for ms in self.fp32_groups]
        if saved is None or [[tuple(t.shape) for t in ms] for ms in saved] != shapes:
            raise ValueError("the checkpoint's optimizer holds no fp32 master weights of this "
                             "model's shapes (fp32_groups); was it saved with another model "
                             "or ZeRO stage?")
        if load_optimizer_states:
            self.inner.load_state_dict(state_dict[OPTIMIZER_STATE_DICT])
        self.steps = int(state_dict.get("cur_iter", 0))
        for current, ms in zip(self.fp32_groups, saved, strict=True):
            torch._foreach_copy_(current, list(ms))
