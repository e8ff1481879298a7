"""The optimizer step split by whole parameters over the CPU data-parallel ranks of one machine.

Why: at ZeRO stage 0 every data-parallel rank keeps the whole optimizer state and runs the same
update over every parameter. Two 1-thread CPU ranks therefore did the same work twice: for a
70M-parameter model in bf16 the update (fp32 gradient copies, norm, AdamW, copy back) took
about 0.3 s on each rank, and each held 0.85 GB of fp32 master weights and Adam moments.
DeepSpeed's ZeRO-1 shards that state, but on CPU its step was slower than the replicated one
(0.66-0.97 s against 0.35-0.45 s per rank, with flat buffers and gloo).

Here each parameter has one owner among the data-parallel ranks (whole parameters, balanced by
size). A rank's optimizer is built over the parameters it owns, and after the step the new
weights are copied from their owners to the other ranks through the shared-memory windows
that already average the gradients (:meth:`ShmAverager.share_`). The gradients are still
averaged in full on every rank, so clipping and the non-finite check see what they saw
before, and each weight gets the same per-element update: an fp32 run trains bit for bit as
the replicated one. A bf16 run's clipping norm is summed over the owners' parts instead of
over all gradients on each rank, which can differ in the last bit.

Checkpoints keep the replicated layout: :meth:`ShardedOptimizer.state_dict` gathers the
owners' states on the first data-parallel rank (the one DeepSpeed writes; see
``megatron.parallel.gather_state`` for why not ``gather_object``) and
:meth:`ShardedOptimizer.load_state_dict` keeps this rank's part of a whole state. A checkpoint
therefore resumes with any number of ranks, sharded or not.
``MEGATRON_DP_OPTIMIZER=replicated`` keeps the replicated step, for measuring.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from megatron.parallel.gather_state import gather_state
from megatron.parallel.groups import Group
from megatron.parallel.shm_allreduce import ShmAverager
from megatron.training.master_weights import OPTIMIZER_STATE_DICT
from megatron.training.optimizer_view import Groups, OptimizerView

ENV_OVERRIDE = "MEGATRON_DP_OPTIMIZER"
MASTERS = "fp32_groups"  # MasterWeights' (and DeepSpeed's wrapper's) key for the masters

StateDict = dict[str, Any]


def why_not_sharded(*, dp_size: int, device_type: str, zero_stage: int, is_pipe: bool,
                    optimizer: Any, fp32_engine: bool) -> str | None:
    """Why every data-parallel rank must step the whole model; None where they need not.

    ``fp32_engine``: DeepSpeed runs the engine as fp32 and steps our optimizer as it is
    (fp32, or bf16 with our master weights); its fp16 and bf16 wrappers keep state of their
    own.
    """
    choice = os.environ.get(ENV_OVERRIDE, "sharded")
    if choice not in ("sharded", "replicated"):
        raise ValueError(f"{ENV_OVERRIDE}={choice!r}: expected 'sharded' or 'replicated'")
    checks = (
        (choice == "replicated", f"{ENV_OVERRIDE}=replicated"),
        (dp_size < 2, "one data-parallel rank"),
        (device_type != "cpu", "not a CPU run"),
        (zero_stage > 0, "ZeRO partitions the optimizer itself"),
        (is_pipe, "the pipeline engine"),
        (not isinstance(optimizer, torch.optim.Optimizer), "DeepSpeed builds the optimizer"),
        (not fp32_engine, "DeepSpeed's fp16 or bf16 optimizer wrapper"),
    )
    return next((reason for failed, reason in checks if failed), None)


def assign_owners(sizes: Sequence[int], ranks: int) -> list[int]:
    """An owner for each parameter (by element count): largest first, each to the rank with
    the fewest elements so far (ties: the lower index). Every rank computes the same."""
    load = [0] * ranks
    owners = [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        owners[index] = rank
        load[rank] += sizes[index]
    return owners


@dataclass
class ShardPlan:
    """Who steps which parameter, and the windows that carry the weights back to all."""

    owners: list[int]
    """The owning data-parallel rank of each parameter, in param-group order."""
    dp: Group
    sharer: ShmAverager

    @classmethod
    def create(cls, groups: Groups, dp: Group, dtype: torch.dtype) -> ShardPlan | None:
        """Collective over ``dp``; None when its ranks share no memory."""
        sharer = ShmAverager.create(dp.group, dp.ranks, dp.rank, dtype)
        if sharer is None:
            return None
        sizes = [p.numel() for g in groups for p in g["params"]]
        return cls(assign_owners(sizes, dp.size), dp, sharer)

    def owned(self, groups: Groups) -> Groups:
        """``groups`` with only this rank's parameters (a group may be left empty)."""
        owners = iter(self.owners)
        return [{**g, "params": [p for p in g["params"] if next(owners) == self.dp.rank]}
                for g in groups]

    def indices_of(self, rank: int) -> list[int]:
        """Positions, in the whole param-group order, of the parameters ``rank`` owns."""
        return [i for i, owner in enumerate(self.owners) if owner == rank]


class ShardedOptimizer(OptimizerView):
    """Steps this rank's parameters with ``local``, then gives every rank every new weight.

    ``param_groups`` and ``state`` are ``local``'s (an LR schedule sets every rank's own
    groups); other attributes (``overflow``, ``_global_grad_norm``, ``refresh_fp32_params``)
    are ``local``'s too, so DeepSpeed and the trainer see what they would without sharding.

    Args:
        local: the optimizer over this rank's parameters (``plan.owned(groups)``).
        groups: the whole model's param groups, in the order ``plan.owners`` follows.
        plan: the owners and the shared-memory windows.
    """

    def __init__(self, local: Any, groups: Groups, plan: ShardPlan) -> None:
        self.local, self.plan = local, plan
        self.params = [p for g in groups for p in g["params"]]
        self.group_sizes = [len(g["params"]) for g in groups]
        self.group_of = [g for g, n in enumerate(self.group_sizes) for _ in range(n)]

    def __getattr__(self, name: str) -> Any:
        if name in ("local", "plan"):  # not set yet (or unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.local, name)

    def viewed(self) -> Any:
        return self.local

    def __repr__(self) -> str:
        return f"ShardedOptimizer({self.local!r}, ranks={self.plan.dp.size})"

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """``local``'s step, then the owners' weights to every rank (unless ``local``
        withheld the update, as every rank then does)."""
        if closure is not None:
            raise ValueError("ShardedOptimizer.step takes no closure")
        result = self.local.step()
        if not getattr(self.local, "overflow", False):
            self.plan.sharer.share_([p.data for p in self.params], self.plan.owners)
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient, owned or not (each rank computes all of them)."""
        for p in self.params:
            p.grad = None

    def state_dict(self) -> StateDict:  # type: ignore[override]
        """The whole model's state, in the replicated layout, on the first data-parallel rank;
        this rank's part elsewhere. Collective over the data-parallel group (DeepSpeed calls it
        on every rank and writes the first one's)."""
        part = self.local.state_dict()
        parts = gather_state(part, self.plan.dp)
        return self._whole(parts) if parts is not None else part

    def load_state_dict(self, state_dict: StateDict, **kwargs: Any) -> None:  # type: ignore[override]
        """This rank's part of a whole (replicated-layout) state; ``kwargs`` go to ``local``.

        Raises:
            ValueError: when the state's param groups do not match this model's.
        """
        self.local.load_state_dict(self._part(state_dict), **kwargs)

    # The replicated layout: torch's {"state": {index: ...}, "param_groups": [...]}, with
    # MasterWeights' wrapper keys around it when ``local`` is one.
    def _whole(self, parts: Sequence[StateDict]) -> StateDict:
        if OPTIMIZER_STATE_DICT not in parts[0]:
            return self._whole_torch(parts)
        whole = dict(parts[0])
        whole[OPTIMIZER_STATE_DICT] = self._whole_torch([p[OPTIMIZER_STATE_DICT] for p in parts])
        masters: list[Any] = [None] * len(self.params)
        for rank, part in enumerate(parts):
            flat = [m for ms in part[MASTERS] for m in ms]
            for index, master in zip(self.plan.indices_of(rank), flat, strict=True):
                masters[index] = master
        whole[MASTERS] = self._by_group(masters)
        return whole

    def _whole_torch(self, parts: Sequence[StateDict]) -> StateDict:
        state = {}
        for rank, part in enumerate(parts):
            mine = self.plan.indices_of(rank)
            state.update({mine[local]: value for local, value in part["state"].items()})
        groups, start = [], 0
        for group, n in zip(parts[0]["param_groups"], self.group_sizes, strict=True):
            groups.append({**group, "params": list(range(start, start + n))})
            start += n
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def _part(self, whole: StateDict) -> StateDict:
        if OPTIMIZER_STATE_DICT not in whole:
            return self._part_torch(whole)
        part = dict(whole)
        part[OPTIMIZER_STATE_DICT] = self._part_torch(whole[OPTIMIZER_STATE_DICT])
        saved = whole.get(MASTERS)
        if saved is not None:  # MasterWeights itself says what is wrong with a bad one
            if [len(ms) for ms in saved] != self.group_sizes:
                raise ValueError(self._mismatch(f"{MASTERS} of {[len(ms) for ms in saved]}"))
            flat = [m for ms in saved for m in ms]
            mine = self.plan.indices_of(self.plan.dp.rank)
            part[MASTERS] = [[flat[i] for i in mine if self.group_of[i] == g]
                             for g in range(len(self.group_sizes))]
        return part

    def _part_torch(self, whole: StateDict) -> StateDict:
        sizes = [len(g["params"]) for g in whole["param_groups"]]
        if sizes != self.group_sizes:
            raise ValueError(self._mismatch(f"param groups of {sizes}"))
        ids = [i for g in whole["param_groups"] for i in g["params"]]
        mine = self.plan.indices_of(self.plan.dp.rank)
        state = {local: whole["state"][ids[i]] for local, i in enumerate(mine)
                 if ids[i] in whole["state"]}
        groups, start = [], 0
        for g, group in enumerate(whole["param_groups"]):
            n = sum(1 for i in mine if self.group_of[i] == g)
            groups.append({**group, "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    def _by_group(self, items: list[Any]) -> list[list[Any]]:
        """Items in whole param-group order, split into one list per group."""
        out, start = [], 0
        for n in self.group_sizes:
            out.append(items[start:start + n])
            start += n
        return out

    def _mismatch(self, found: str) -> str:
        return (f"the optimizer state has {found} parameters, but this model's param groups "
                f"hold {self.group_sizes}: was it saved with another model or optimizer?")
