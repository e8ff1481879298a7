"""The full commands DeepSpeed 0.19's own backends build from the argv runner_argv produces.

Each test feeds runner_argv's output to deepspeed.launcher.runner.parse_args, resolves the
two-node hostfile with DeepSpeed's functions (as runner.main does), builds DeepSpeed's
MultiNodeRunner for the chosen backend and asserts the complete command list. Nothing is
executed: no ssh, pdsh, mpirun or srun runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import deepspeed.launcher.multinode_runner as ds_multinode
import deepspeed.launcher.runner as ds_runner
import pytest

from megatron.launch import export_env, runner_argv, worker_exports

# {"worker-0": [0, 1], "worker-1": [0, 1]} and {"worker-1": [0, 1]}, urlsafe-base64 JSON.
BOTH_NODES_B64 = "eyJ3b3JrZXItMCI6IFswLCAxXSwgIndvcmtlci0xIjogWzAsIDFdfQ=="
SECOND_NODE_B64 = "eyJ3b3JrZXItMSI6IFswLCAxXX0="
USER_ARGV = ["--deepspeed_config", "eyJ0cmFpbiI6IDF9", "--megatron_config", "/run/neox.json"]
# What the launching shell holds: DeepSpeed forwards PYTHONPATH by itself, WANDB_API_KEY only
# because export_env adds it; HOME and CUDA_VISIBLE_DEVICES must stay behind.
LAUNCH_ENV = {
    "PYTHONPATH": "/repo",
    "WANDB_API_KEY": "k3y",
    "HOME": "/home/u",
    "CUDA_VISIBLE_DEVICES": "0,1",
}


@pytest.fixture
def hostfile(tmp_path: Path) -> str:
    path = tmp_path / "hostfile"
    path.write_text("# two nodes, two GPUs each\nworker-0 slots=2\nworker-1 slots=2\n")
    return str(path)


def ds_command(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Do what deepspeed.launcher.runner.main does up to the backend's get_cmd."""
    args = ds_runner.parse_args(argv)
    pool = ds_runner.fetch_hostfile(args.hostfile)
    active = ds_runner.parse_inclusion_exclusion(pool, args.include, args.exclude)
    active = ds_runner.apply_num_nodes_and_gpus(active, args.num_nodes, args.num_gpus)
    world_info = ds_runner.encode_world_info(active)
    cls = ds_runner.LAUNCHER_CLASSES[args.launcher]
    runner = cls(args, world_info) if args.launcher == "pdsh" else cls(args, world_info, pool)
    env = dict(LAUNCH_ENV if env is None else env)
    export_list = list(ds_runner.EXPORT_ENVS)
    export_env(export_list, worker_exports(env))
    for var, value in env.items():
        if any(var.startswith(name) for name in export_list):
            runner.add_export(var, value)
    cmd = runner.get_cmd(env, active)
    return cmd[0] if args.launcher == "pdsh" else cmd


def neox(**keys: object) -> SimpleNamespace:
    return SimpleNamespace(**keys)


def test_pdsh_two_nodes(hostfile: str) -> None:
    argv = runner_argv(neox(hostfile=hostfile, master_addr="10.0.0.1"), "train.py", USER_ARGV)
    assert argv == [
        "--hostfile", hostfile, "--master_port", "29500", "--master_addr", "10.0.0.1",
        "--launcher", "pdsh", "train.py", *USER_ARGV,
    ]  # fmt: skip
    assert ds_command(argv) == [
        "pdsh", "-S", "-f", "1024", "-w", "worker-0,worker-1",
        "export PYTHONPATH=/repo; export WANDB_API_KEY=k3y; ",
        f"cd {os.path.abspath('.')};", sys.executable, "-u", "-m", "deepspeed.launcher.launch",
        f"--world_info={BOTH_NODES_B64}", "--node_rank=%n", "--master_addr=10.0.0.1",
        "--master_port=29500", "--enable_each_rank_log=None", "train.py", *USER_ARGV,
    ]  # fmt: skip


def test_pdsh_include_one_node_with_ssh_port(hostfile: str) -> None:
    keys = neox(hostfile=hostfile, include="worker-1", master_addr="10.0.0.2", master_port=6000,
                force_multi=True, ssh_port=2222)  # fmt: skip
    argv = runner_argv(keys, "train.py", [])
    assert ds_command(argv, env={}) == [
        "pdsh", "-S", "-f", "1024", "-w", "worker-1", "",
        f"cd {os.path.abspath('.')};", sys.executable, "-u", "-m", "deepspeed.launcher.launch",
        f"--world_info={SECOND_NODE_B64}", "--node_rank=%n", "--master_addr=10.0.0.2",
        "--master_port=6000", "--enable_each_rank_log=None", "train.py",
    ]  # fmt: skip
    assert ds_runner.parse_args(argv).ssh_port == 2222


def test_openmpi_two_nodes(hostfile: str) -> None:
    keys = neox(hostfile=hostfile, master_addr="10.0.0.1", launcher="openmpi", deepspeed_mpi=True)
    argv = runner_argv(keys, "train.py", USER_ARGV)
    assert "--force_multi" in argv
    assert ds_command(argv) == [
        "mpirun", "-n", "4", "-hostfile", hostfile, "--mca", "btl", "^openib",
        "--mca", "btl_tcp_if_include", "eth0",
        "-x", "UCX_TLS=tcp", "-x", "PYTHONPATH=/repo", "-x", "WANDB_API_KEY=k3y",
        sys.executable, "-u", "train.py", *USER_ARGV,
    ]  # fmt: skip


def test_openmpi_launcher_args_replace_default_interface(hostfile: str) -> None:
    keys = neox(hostfile=hostfile, master_addr="10.0.0.1", launcher="OpenMPI",
                launcher_args="--mca btl_tcp_if_include ib0 --bind-to none")  # fmt: skip
    assert ds_command(runner_argv(keys, "train.py", []), env={}) == [
        "mpirun", "-n", "4", "-hostfile", hostfile, "--mca", "btl", "^openib",
        "--mca", "btl_tcp_if_include", "ib0", "--bind-to", "none",
        "-x", "UCX_TLS=tcp", sys.executable, "-u", "train.py",
    ]  # fmt: skip


def test_mvapich_two_nodes(hostfile: str, tmp_path: Path, monkeypatch) -> None:
    mv_hosts = tmp_path / "mvapich_hosts"
    monkeypatch.setattr(ds_multinode, "MVAPICH_TMP_HOSTFILE", str(mv_hosts))
    keys = neox(hostfile=hostfile, master_addr="10.0.0.1", launcher="mvapich")
    cmd = ds_command(runner_argv(keys, "train.py", USER_ARGV))
    from deepspeed.accelerator import get_accelerator

    cuda = ["-env", "MV2_USE_CUDA=1"] if get_accelerator().device_name() == "cuda" else []
    assert cmd == [
        "mpirun", "-np", "4", "-ppn", "2", "--hostfile", str(mv_hosts),
        "-env", "MV2_SMP_USE_CMA=0", "-env", "MV2_DEBUG_SHOW_BACKTRACE=1", *cuda,
        "-env", "MV2_SUPPORT_DL=1", "-env", "MV2_ENABLE_AFFINITY=0",
        "-env", "MV2_INTER_ALLGATHER_TUNING=5", "-env", "MV2_CUDA_USE_NAIVE=0",
        "-env", "PYTHONPATH=/repo", "-env", "WANDB_API_KEY=k3y",
        sys.executable, "-u", "train.py", *USER_ARGV,
    ]  # fmt: skip
    assert mv_hosts.read_text() == "worker-0\nworker-1\n"


def test_mpich_two_nodes(hostfile: str) -> None:
    keys = neox(hostfile=hostfile, master_addr="10.0.0.1", launcher="mpich", master_port=7000)
    helper = str(Path(ds_runner.__file__).resolve().parent / "launcher_helper.py")
    assert ds_command(runner_argv(keys, "train.py", USER_ARGV)) == [
        "mpirun", "-n", "4", "-ppn", "2",
        "-genv", "PYTHONPATH=/repo", "-genv", "WANDB_API_KEY=k3y",
        "-genv", "MASTER_ADDR", "10.0.0.1", "-genv", "MASTER_PORT", "7000",
        "-genv", "WORLD_SIZE", "4", "-genv", "LOCAL_SIZE", "2", "-hosts", "worker-0,worker-1",
        sys.executable, "-u", helper, "--launcher", "mpich", "train.py", *USER_ARGV,
    ]  # fmt: skip


def test_impi_two_nodes(hostfile: str) -> None:
    keys = neox(hostfile=hostfile, master_addr="10.0.0.1", launcher="impi")
    per_rank: list[str] = []
    for rank, local in ((0, 0), (1, 1), (2, 0), (3, 1)):
        per_rank += [":"] if rank else []
        per_rank += ["-n", "1", "-env", "RANK", str(rank), "-env", "LOCAL_RANK", str(local),
                     sys.executable, "-u", "train.py", "--x"]  # fmt: skip
    assert ds_command(runner_argv(keys, "train.py", ["--x"]), env={"WANDB_API_KEY": "k"}) == [
        "mpirun", "-ppn", "2", "-genv", "WANDB_API_KEY", "k",
        "-genv", "MASTER_ADDR", "10.0.0.1", "-genv", "MASTER_PORT", "29500",
        "-genv", "WORLD_SIZE", "4", "-genv", "LOCAL_SIZE", "2", "-genv", "I_MPI_PIN", "0",
        "-hosts", "worker-0,worker-1", *per_rank,
    ]  # fmt: skip


def test_slurm_two_nodes_from_allocation(hostfile: str) -> None:
    keys = neox(hostfile=hostfile, launcher="slurm", deepspeed_slurm=True, num_nodes=2,
                num_gpus=2, comment="neox run", account="proj-1")  # fmt: skip
    argv = runner_argv(keys, "train.py", USER_ARGV, environ={"SLURM_JOB_NODELIST": "worker-[0-1]"})
    assert argv == [
        "--hostfile", hostfile, "--num_nodes", "2", "--num_gpus", "2", "--master_port", "29500",
        "--master_addr", "worker-0", "--launcher", "slurm",
        "--launcher_args", "--comment 'neox run' --account proj-1", "--force_multi",
        "--no_ssh_check", "train.py", *USER_ARGV,
    ]  # fmt: skip
    assert ds_command(argv) == [
        "srun", "-n", "4", "--comment", "neox run", "--account", "proj-1",
        "--nodes", "2", "--gpus-per-node", "2",
        "--export=ALL,PYTHONPATH=/repo,WANDB_API_KEY=k3y",
        sys.executable, "-u", "train.py", *USER_ARGV,
    ]  # fmt: skip


def test_slurm_include_names_the_surviving_hosts(hostfile: str) -> None:
    keys = neox(hostfile=hostfile, include="worker-1", launcher="slurm", master_addr="worker-1")
    assert ds_command(runner_argv(keys, "train.py", []), env={}) == [
        "srun", "-n", "2", "--nodelist", "worker-1", "--nodes", "1", "--export=ALL",
        sys.executable, "-u", "train.py",
    ]  # fmt: skip


def test_single_node_cpu_run_parses_as_local_launch() -> None:
    argv = runner_argv(neox(num_gpus=2), "train.py", USER_ARGV, environ={})
    assert argv == ["--num_gpus", "2", "--master_port", "29500", "--launcher", "pdsh",
                    "train.py", *USER_ARGV]  # fmt: skip
    parsed = ds_runner.parse_args(argv)
    assert (parsed.num_gpus, parsed.hostfile, parsed.force_multi) == (2, "/job/hostfile", False)
    assert (parsed.user_script, parsed.user_args) == ("train.py", USER_ARGV)
