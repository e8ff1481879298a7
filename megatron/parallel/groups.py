"""ProcessGroups: every communicator of a run, created once and passed to whoever needs one.

There are no module-level group globals. ``ProcessGroups.build(layout)`` creates all groups
(every rank calls ``new_group`` for every group, in the same order, as torch requires) and
hands back small :class:`Group` records. Layers receive ``groups.tp`` at construction.

How to hand these groups to DeepSpeed 0.19 (checked against its sources):

(a) Plain engine (``pipe_parallel_size`` 0), any TP: ``deepspeed.initialize(model=module,
    mpu=groups.mpu, ...)``. DeepSpeed then takes the data-parallel size for its batch
    arithmetic from ``mpu.get_data_parallel_world_size()``, all-reduces gradients and shards
    ZeRO state over ``mpu.get_data_parallel_group()``, sums gradient norms over
    ``mpu.get_model_parallel_group()`` (counting replicated parameters only on model-parallel
    rank 0 and parameters marked ``model_parallel=True`` everywhere), and names checkpoint
    files ``mp_rank_XX`` after ``mpu.get_model_parallel_rank()``.

(b) ``PipelineModule`` (``pipe_parallel_size`` >= 1), any TP: pass
    ``PipelineModule(..., topology=groups.topology)`` and **no** ``mpu`` to
    ``deepspeed.initialize`` (DeepSpeed asserts ``mpu is None`` for pipeline modules and uses
    the module's own ``PipelineParallelGrid`` as the mpu). The grid creates its own process
    groups from that topology; because :class:`ParallelLayout` orders ranks exactly like
    ``PipeModelDataParallelTopology``, the grid's data/pipe/slice groups hold the same ranks
    as our ``dp``/``pp``/``tp`` groups, so our layers' tensor-parallel collectives and
    DeepSpeed's data-parallel reductions agree. Build ``ProcessGroups`` on every rank before
    the ``PipelineModule`` so both sequences of ``new_group`` calls line up on all ranks.

The adapter deliberately has no ``get_sequence_parallel_*`` methods: DeepSpeed reads their
presence as Ulysses sequence parallelism and would then divide the world differently. Our
Megatron-style sequence parallelism lives inside the tensor-parallel group.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch.distributed as dist

from megatron.parallel.errors import LayoutError
from megatron.parallel.layout import ParallelLayout


@dataclass(frozen=True)
class Group:
    """One communicator as a layer sees it.

    Attributes:
        size: number of ranks in the group.
        rank: this process's index inside the group.
        ranks: global ranks of the members, in group order.
        group: the torch ``ProcessGroup``; ``None`` when ``size == 1`` because a group of one
            never communicates (and ``None`` means "the world group" to torch, so it must
            never be passed to a collective).
    """

    size: int = 1
    rank: int = 0
    ranks: tuple[int, ...] = (0,)
    group: Any = None

    @property
    def src_rank(self) -> int:
        """Global rank of the group's first member (the usual broadcast source)."""
        return self.ranks[0]


TPGroup = Group
"""Alias used in type hints of tensor-parallel layers (``tp: TPGroup``)."""


def collective_device() -> str:
    """Where a tensor must live for a collective on the default group: NCCL only takes CUDA
    tensors, gloo (and no process group at all) CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return "cuda"
    return "cpu"


def _create(groups_ranks: list[list[int]], rank: int) -> Any:
    """Create every group of one axis on this rank and return the handle containing ``rank``."""
    mine = None
    for ranks in groups_ranks:
        handle = dist.new_group(ranks=ranks)
        if rank in ranks:
            mine = handle
    return mine


def _record(ranks: list[int], rank: int, handle: Any) -> Group:
    return Group(size=len(ranks), rank=ranks.index(rank), ranks=tuple(ranks),
                 group=handle if len(ranks) > 1 else None)


@dataclass(frozen=True)
class ProcessGroups:
    """All communicators of one process.

    Attributes:
        layout: the layout the groups were built from.
        tp: tensor-parallel group.
        dp: data-parallel group.
        pp: pipeline group (all stages of one tp slice of one replica).
        model: every rank of one data-parallel replica (pipe x tensor); DeepSpeed's
            "model parallel group", over which gradient norms are summed.
        handles: real ``ProcessGroup`` handles per axis name, including groups of size 1;
            only the DeepSpeed adapter needs these.
    """

    layout: ParallelLayout
    tp: Group
    dp: Group
    pp: Group
    model: Group
    handles: dict[str, Any]

    @classmethod
    def build(cls, layout: ParallelLayout) -> ProcessGroups:
        """Create every group; call on all ranks, after ``torch.distributed`` is initialised.

        Raises:
            LayoutError: if torch.distributed is not initialised or its world size or rank
                disagree with ``layout``.
        """
        if not dist.is_available() or not dist.is_initialized():
            raise LayoutError("ProcessGroups.build needs torch.distributed to be initialised; "
                              "use ProcessGroups.single() for one process")
        if (dist.get_world_size(), dist.get_rank()) != (layout.world_size, layout.rank):
            raise LayoutError(
                f"layout has world size {layout.world_size} and rank {layout.rank}, but "
                f"torch.distributed has {dist.get_world_size()} and {dist.get_rank()}"
            )
        r = layout.rank
        handles = {"tp": _create(layout.tp_groups(), r), "dp": _create(layout.dp_groups(), r),
                   "pp": _create(layout.pp_groups(), r)}
        # With one stage the model group is the tp group; reuse it instead of a duplicate.
        handles["model"] = handles["tp"] if layout.pp == 1 else _create(layout.model_groups(), r)
        return cls(
            layout=layout,
            tp=_record(layout.tp_group_ranks, r, handles["tp"]),
            dp=_record(layout.dp_group_ranks, r, handles["dp"]),
            pp=_record(layout.pp_group_ranks, r, handles["pp"]),
            model=_record(layout.model_group_ranks, r, handles["model"]),
            handles=handles,
        )

    @classmethod
    def single(cls) -> ProcessGroups:
        """Groups for one process without torch.distributed: every size is 1."""
        one = Group()
        return cls(layout=ParallelLayout(tp=1, pp=1, dp=1, rank=0), tp=one, dp=one, pp=one,
                   model=one, handles={"tp": None, "dp": None, "pp": None, "model": None})

    @cached_property
    def topology(self) -> Any:
        """DeepSpeed's ``PipeModelDataParallelTopology`` for this layout (see module doc)."""
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        lay = self.layout
        return PipeModelDataParallelTopology(num_pp=lay.pp, num_mp=lay.tp, num_dp=lay.dp)

    @cached_property
    def mpu(self) -> DeepSpeedMPU:
        """Adapter for ``deepspeed.initialize(mpu=...)`` (plain engine only; see module doc)."""
        return DeepSpeedMPU(self)


class DeepSpeedMPU:
    """The "mpu" object DeepSpeed's engine, ZeRO optimizers and checkpointing query.

    Method names are DeepSpeed's (and Megatron's); the values come from a ProcessGroups.
    """

    def __init__(self, groups: ProcessGroups) -> None:
        self._g = groups

    def get_global_rank(self) -> int:
        return self._g.layout.rank

    # Model parallel = every rank of one replica (pipe x tensor), as in DeepSpeed's grid.
    def get_model_parallel_rank(self) -> int:
        return self._g.model.rank

    def get_model_parallel_world_size(self) -> int:
        return self._g.model.size

    def get_model_parallel_group(self) -> Any:
        return self._g.handles["model"]

    # Tensor (slice) parallel.
    def get_tensor_model_parallel_rank(self) -> int:
        return self._g.tp.rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self._g.tp.size

    def get_tensor_model_parallel_group(self) -> Any:
        return self._g.handles["tp"]

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self._g.tp.src_rank

    get_slice_parallel_rank = get_tensor_model_parallel_rank
    get_slice_parallel_world_size = get_tensor_model_parallel_world_size
    get_slice_parallel_group = get_tensor_model_parallel_group

    # Data parallel.
    def get_data_parallel_rank(self) -> int:
        return self._g.dp.rank

    def get_data_parallel_world_size(self) -> int:
        return self._g.dp.size

    def get_data_parallel_group(self) -> Any:
        return self._g.handles["dp"]

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self._g.dp.ranks)

    # Pipeline parallel.
    def get_pipe_parallel_rank(self) -> int:
        return self._g.pp.rank

    def get_pipe_parallel_world_size(self) -> int:
        return self._g.pp.size

    def get_pipe_parallel_group(self) -> Any:
        return self._g.handles["pp"]

    get_pipeline_model_parallel_rank = get_pipe_parallel_rank
    get_pipeline_model_parallel_world_size = get_pipe_parallel_world_size
    get_pipeline_model_parallel_group = get_pipe_parallel_group
