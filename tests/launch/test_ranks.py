"""Worker ranks from the torch launcher's, MPI's and SLURM's variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron.launch import LaunchError, distributed_env, rank_scheme, worker_env_rank


@pytest.mark.parametrize(
    ("environ", "expected", "scheme"),
    [
        ({}, None, None),
        ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}, (5, 1, 8), "torch"),
        (
            {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
             "OMPI_COMM_WORLD_SIZE": "4"},
            (3, 1, 4),
            "openmpi",
        ),
        (
            {"MV2_COMM_WORLD_RANK": "2", "MV2_COMM_WORLD_LOCAL_RANK": "0",
             "MV2_COMM_WORLD_SIZE": "4"},
            (2, 0, 4),
            "mvapich",
        ),
        ({"PMI_RANK": "6", "MPI_LOCALRANKID": "2", "PMI_SIZE": "8"}, (6, 2, 8), "mpich"),
        ({"SLURM_PROCID": "7", "SLURM_LOCALID": "3", "SLURM_NTASKS": "16"}, (7, 3, 16), "slurm"),
        # pdsh inside an sbatch job: the batch step's SLURM_PROCID=0 must not win.
        (
            {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
             "RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16"},
            (9, 1, 16),
            "torch",
        ),
        # mpirun under sbatch: MPI's numbering, not the batch step's.
        (
            {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1",
             "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
             "OMPI_COMM_WORLD_SIZE": "2"},
            (1, 1, 2),
            "openmpi",
        ),
    ],
)  # fmt: skip
def test_worker_env_rank(environ: dict[str, str], expected: tuple | None, scheme: str | None):
    assert worker_env_rank(environ) == expected
    found = rank_scheme(environ)
    assert (found.name if found else None) == scheme


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "torch launch: LOCAL_RANK is not set"),
        ({"SLURM_PROCID": "x", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}, "SLURM_PROCID='x'"),
        ({"PMI_RANK": "4", "MPI_LOCALRANKID": "0", "PMI_SIZE": "4"}, "inconsistent"),
    ],
)
def test_worker_env_rank_errors(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(LaunchError, match=fragment):
        worker_env_rank(environ)


SLURM = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}


def test_distributed_env_under_slurm_uses_first_allocated_host() -> None:
    env = {**SLURM, "SLURM_JOB_NODELIST": "gpu[12-15]"}
    assert distributed_env(env, master_port=6000) == {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu12",
        "MASTER_PORT": "6000",
    }


def test_distributed_env_master_precedence(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=4\nnode-b slots=4\n")
    assert distributed_env(SLURM, hostfile=hostfile)["MASTER_ADDR"] == "node-a"
    assert distributed_env(SLURM, master_addr="10.0.0.7", hostfile=hostfile)["MASTER_ADDR"] == (
        "10.0.0.7"
    )
    env = {**SLURM, "MASTER_ADDR": "10.0.0.8", "MASTER_PORT": "7001"}
    assert distributed_env(env, master_addr="10.0.0.7", master_port=6000) == {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "MASTER_ADDR": "10.0.0.8",
        "MASTER_PORT": "7001",
    }


def test_distributed_env_single_process_and_missing_master() -> None:
    assert distributed_env({}) == {}
    with pytest.raises(LaunchError, match="master_addr: not set"):
        distributed_env(SLURM)
