"""Where a worker finds its rank: the torch launcher's variables or the scheduler's.

With pdsh or a single node, ``deepspeed.launcher.launch`` starts each rank with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. DeepSpeed's MPI and
slurm backends start the script directly, so only the scheduler's own variables exist:
DeepSpeed's ``init_distributed(auto_mpi_discovery=True)`` would then ask mpi4py, which we do
not require, and it knows nothing of SLURM. Instead the worker calls
:func:`distributed_env` and puts the result into ``os.environ`` before
``deepspeed.init_distributed()``, which then finds the usual ``env://`` variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from megatron.launch.errors import LaunchError
from megatron.launch.hostfile import expand_slurm_hostlist, read_hostfile


@dataclass(frozen=True)
class RankScheme:
    """The three variables one launcher family sets on every rank."""

    name: str
    rank: str
    local_rank: str
    world_size: str


# First match wins. The torch launcher comes first because a job started by pdsh or
# deepspeed.launcher.launch inside a SLURM allocation still carries the allocation's
# SLURM_PROCID=0; MPI comes before SLURM for the same reason when mpirun runs under sbatch.
RANK_SCHEMES: tuple[RankScheme, ...] = (
    RankScheme("torch", "RANK", "LOCAL_RANK", "WORLD_SIZE"),
    RankScheme(
        "openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"
    ),
    RankScheme(
        "mvapich", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_SIZE"
    ),
    RankScheme("mpich", "PMI_RANK", "MPI_LOCALRANKID", "PMI_SIZE"),
    RankScheme("slurm", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"),
)


def _read_int(environ: Mapping[str, str], name: str, scheme: str) -> int:
    if name not in environ:
        raise LaunchError(f"{scheme} launch: {name} is not set, but the other rank variables are")
    try:
        return int(environ[name])
    except ValueError as err:
        raise LaunchError(f"{name}={environ[name]!r}: expected an integer") from err


def rank_scheme(environ: Mapping[str, str]) -> RankScheme | None:
    """The first scheme whose rank variable is set, or None in a plain single process."""
    return next((s for s in RANK_SCHEMES if s.rank in environ), None)


def worker_env_rank(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` from the launcher's or scheduler's variables.

    Returns:
        None when no launcher set a rank (a plain ``python train.py``).

    Raises:
        LaunchError: when a family's variables are incomplete, not integers, or out of range.
    """
    scheme = rank_scheme(environ)
    if scheme is None:
        return None
    rank = _read_int(environ, scheme.rank, scheme.name)
    local_rank = _read_int(environ, scheme.local_rank, scheme.name)
    world_size = _read_int(environ, scheme.world_size, scheme.name)
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < world_size:
        raise LaunchError(
            f"{scheme.name} launch: rank {rank}, local rank {local_rank} and world size "
            f"{world_size} are inconsistent (expected 0 <= ranks < world size)"
        )
    return rank, local_rank, world_size


def _master_addr(
    environ: Mapping[str, str], master_addr: str | None, hostfile: str | Path | None
) -> str:
    """MASTER_ADDR, else the config's value, else the first SLURM host, else the first hostfile
    host: the same host DeepSpeed's runner treats as node 0."""
    if environ.get("MASTER_ADDR"):
        return environ["MASTER_ADDR"]
    if master_addr:
        return master_addr
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if nodelist:
        return expand_slurm_hostlist(nodelist)[0]
    if hostfile is not None and Path(hostfile).is_file():
        return next(iter(read_hostfile(hostfile)))
    raise LaunchError(
        "master_addr: not set and no MASTER_ADDR, SLURM_JOB_NODELIST or hostfile to take it "
        "from; set master_addr to the address of the first node"
    )


def distributed_env(
    environ: Mapping[str, str],
    *,
    master_addr: str | None = None,
    master_port: int | None = 29500,
    hostfile: str | Path | None = None,
) -> dict[str, str]:
    """The ``env://`` variables torch.distributed needs, derived from whatever launched us.

    Args:
        environ: this process's environment.
        master_addr: the config's ``master_addr`` (used when MASTER_ADDR is unset).
        master_port: the config's ``master_port`` (used when MASTER_PORT is unset).
        hostfile: the config's ``hostfile``; its first host is the fallback master.

    Returns:
        ``{}`` for a plain single process; otherwise RANK, LOCAL_RANK, WORLD_SIZE,
        MASTER_ADDR and MASTER_PORT as strings, to be merged into ``os.environ``.
    """
    ranks = worker_env_rank(environ)
    if ranks is None:
        return {}
    rank, local_rank, world_size = ranks
    port = environ.get("MASTER_PORT") or str(master_port if master_port is not None else 29500)
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": _master_addr(environ, master_addr, hostfile),
        "MASTER_PORT": port,
    }
