"""ParallelLayout: pure rank arithmetic for tensor, pipeline and data parallelism.

The rank order is the one DeepSpeed's ``PipeModelDataParallelTopology(num_pp, num_mp, num_dp)``
uses: axes ``(pipe, data, model)`` in row-major order, so the model (tensor-parallel) axis
varies fastest::

    rank = (pp_rank * dp + dp_rank) * tp + tp_rank

Keeping exactly that order matters: DeepSpeed's ``PipelineModule`` builds its own groups from
the topology, and our tensor/data groups must hold the same ranks as its grid. Nothing here
touches ``torch.distributed``; it is unit-tested as plain arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.parallel.errors import LayoutError


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LayoutError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class ParallelLayout:
    """Sizes of the three parallel axes and this process's global rank.

    Attributes:
        tp: tensor (model) parallel size.
        pp: pipeline parallel size (number of stages, at least 1).
        dp: data parallel size.
        rank: this process's global rank in ``[0, tp * pp * dp)``.
    """

    tp: int
    pp: int
    dp: int
    rank: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp"):
            _check_positive(name, getattr(self, name))
        if not isinstance(self.rank, int) or not 0 <= self.rank < self.world_size:
            raise LayoutError(
                f"rank must be an int in [0, {self.world_size}) for layout "
                f"tp={self.tp} pp={self.pp} dp={self.dp}, got {self.rank!r}"
            )

    @classmethod
    def from_world(cls, world_size: int, tp: int, pp: int, rank: int = 0) -> ParallelLayout:
        """Derive the data-parallel size from the world size.

        Args:
            world_size: total number of processes.
            tp: tensor-parallel size (GPT-NeoX ``model_parallel_size``).
            pp: pipeline-parallel size (GPT-NeoX ``pipe_parallel_size``); 0 means "no
                pipeline" and counts as one stage, as in GPT-NeoX.
            rank: this process's global rank.

        Raises:
            LayoutError: if ``world_size`` is not a positive multiple of ``tp * pp``.
        """
        _check_positive("world_size", world_size)
        _check_positive("tp (model_parallel_size)", tp)
        stages = 1 if pp == 0 else pp
        _check_positive("pp (pipe_parallel_size)", stages)
        if world_size % (tp * stages) != 0:
            raise LayoutError(
                f"world size {world_size} is not divisible by model_parallel_size * "
                f"pipe_parallel_size = {tp} * {stages} = {tp * stages}; choose sizes whose "
                "product divides the number of processes"
            )
        return cls(tp=tp, pp=stages, dp=world_size // (tp * stages), rank=rank)

    @property
    def world_size(self) -> int:
        """Total number of processes, ``tp * pp * dp``."""
        return self.tp * self.pp * self.dp

    def rank_of(self, pp_rank: int, dp_rank: int, tp_rank: int) -> int:
        """Global rank at the given coordinates."""
        for name, value, size in (("pp", pp_rank, self.pp), ("dp", dp_rank, self.dp),
                                  ("tp", tp_rank, self.tp)):
            if not 0 <= value < size:
                raise LayoutError(f"{name}_rank {value} out of range [0, {size})")
        return (pp_rank * self.dp + dp_rank) * self.tp + tp_rank

    def coords_of(self, rank: int) -> tuple[int, int, int]:
        """``(pp_rank, dp_rank, tp_rank)`` of a global rank."""
        if not 0 <= rank < self.world_size:
            raise LayoutError(f"rank {rank} out of range [0, {self.world_size})")
        rest, tp_rank = divmod(rank, self.tp)
        pp_rank, dp_rank = divmod(rest, self.dp)
        return pp_rank, dp_rank, tp_rank

    @property
    def pp_rank(self) -> int:
        """Pipeline stage of this process."""
        return self.coords_of(self.rank)[0]

    @property
    def dp_rank(self) -> int:
        """Data-parallel index of this process."""
        return self.coords_of(self.rank)[1]

    @property
    def tp_rank(self) -> int:
        """Tensor-parallel index of this process."""
        return self.coords_of(self.rank)[2]

    @property
    def is_first_stage(self) -> bool:
        """Whether this process holds the first pipeline stage."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        """Whether this process holds the last pipeline stage."""
        return self.pp_rank == self.pp - 1

    def tp_groups(self) -> list[list[int]]:
        """Every tensor-parallel group, in DeepSpeed's ``get_axis_comm_lists('model')`` order."""
        return [[self.rank_of(p, d, t) for t in range(self.tp)]
                for p in range(self.pp) for d in range(self.dp)]

    def dp_groups(self) -> list[list[int]]:
        """Every data-parallel group, ordered like ``get_axis_comm_lists('data')``."""
        return [[self.rank_of(p, d, t) for d in range(self.dp)]
                for p in range(self.pp) for t in range(self.tp)]

    def pp_groups(self) -> list[list[int]]:
        """Every pipeline group, ordered like ``get_axis_comm_lists('pipe')``."""
        return [[self.rank_of(p, d, t) for p in range(self.pp)]
                for d in range(self.dp) for t in range(self.tp)]

    def model_groups(self) -> list[list[int]]:
        """Ranks sharing a data-parallel index (all stages and tp slices of one replica).

        This is what DeepSpeed's pipeline grid calls the "model parallel group": every rank
        that holds a distinct part of the parameters. Gradient norms are summed over it.
        """
        return [sorted(self.rank_of(p, d, t) for p in range(self.pp) for t in range(self.tp))
                for d in range(self.dp)]

    def _mine(self, groups: list[list[int]]) -> list[int]:
        return next(g for g in groups if self.rank in g)

    @property
    def tp_group_ranks(self) -> list[int]:
        """Global ranks of this process's tensor-parallel group."""
        return self._mine(self.tp_groups())

    @property
    def dp_group_ranks(self) -> list[int]:
        """Global ranks of this process's data-parallel group."""
        return self._mine(self.dp_groups())

    @property
    def pp_group_ranks(self) -> list[int]:
        """Global ranks of this process's pipeline group."""
        return self._mine(self.pp_groups())

    @property
    def model_group_ranks(self) -> list[int]:
        """Global ranks of this process's model (pipe x tensor) group."""
        return self._mine(self.model_groups())
