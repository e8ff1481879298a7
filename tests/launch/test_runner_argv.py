"""runner_argv: flag order, environment fallbacks, and every rejected combination."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from megatron.launch import LaunchError, LaunchSettings, runner_argv


def test_defaults_give_only_port_and_launcher() -> None:
    assert runner_argv(SimpleNamespace(), "train.py", ["-a"], environ={}) == [
        "--master_port", "29500", "--launcher", "pdsh", "train.py", "-a",
    ]  # fmt: skip


def test_gpt_neox_none_values_mean_unset() -> None:
    keys = SimpleNamespace(hostfile=None, include=None, exclude=None, num_nodes=-1,
                           num_gpus=None, master_addr=None, comment=None, account=None,
                           autotuning_run=None, launcher="pdsh")  # fmt: skip
    assert runner_argv(keys, "t.py", [], environ={}) == [
        "--master_port", "29500", "--launcher", "pdsh", "t.py",
    ]  # fmt: skip


def test_environment_fills_hostfile_and_master_addr_but_config_wins() -> None:
    env = {"DLTS_HOSTFILE": "/job/hosts", "MASTER_ADDR": "10.1.1.1"}
    argv = runner_argv(SimpleNamespace(), "t.py", [], environ=env)
    assert argv[:6] == ["--hostfile", "/job/hosts", "--master_port", "29500",
                        "--master_addr", "10.1.1.1"]  # fmt: skip
    keys = SimpleNamespace(hostfile="/mine", master_addr="10.9.9.9")
    argv = runner_argv(keys, "t.py", [], environ=env)
    assert argv[:6] == ["--hostfile", "/mine", "--master_port", "29500",
                        "--master_addr", "10.9.9.9"]  # fmt: skip


def test_slurm_nodelist_is_only_used_by_the_slurm_launcher() -> None:
    env = {"SLURM_JOB_NODELIST": "gpu[03-04]"}
    assert LaunchSettings.from_args(SimpleNamespace(launcher="slurm"), env).master_addr == "gpu03"
    assert LaunchSettings.from_args(SimpleNamespace(launcher="pdsh"), env).master_addr is None


def test_autotuning_no_ssh_and_flags() -> None:
    keys = SimpleNamespace(autotuning_run="tune", no_ssh=True, node_rank=1, no_ssh_check=True,
                           master_addr="h0", num_gpus=8)  # fmt: skip
    assert runner_argv(keys, "t.py", [], environ={}) == [
        "--autotuning", "tune", "--num_gpus", "8", "--master_port", "29500",
        "--master_addr", "h0", "--launcher", "pdsh", "--no_ssh_check",
        "--no_ssh", "--node_rank", "1", "t.py",
    ]  # fmt: skip


def test_num_gpus_dropped_when_include_is_set(caplog: pytest.LogCaptureFixture) -> None:
    keys = SimpleNamespace(hostfile="/h", include="w0:0,1", num_gpus=8)
    argv = runner_argv(keys, "t.py", [], environ={})
    assert "--num_gpus" not in argv
    assert argv[:4] == ["--hostfile", "/h", "--include", "w0:0,1"]
    assert "num_gpus: 8 ignored" in caplog.text


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ({"launcher": "jsrun"}, "launcher: unknown value 'jsrun'"),
        ({"include": "a", "exclude": "b"}, "include and exclude are both set"),
        ({"include": "a", "num_nodes": 2}, "num_nodes: 2 cannot be combined"),
        ({"num_nodes": 0}, "num_nodes: expected a positive count"),
        ({"num_gpus": -3}, "num_gpus: expected a positive count"),
        ({"master_port": 70000}, "master_port: expected a TCP port"),
        ({"no_ssh": True}, "no_ssh: true needs node_rank"),
        ({"node_rank": 0}, "node_rank: 0 is only used together with no_ssh"),
        ({"detect_nvlink_pairs": True}, "detect_nvlink_pairs: a DeeperSpeed-only feature"),
        ({"autotuning_run": "go"}, "autotuning_run: expected 'tune', 'run' or null"),
        ({"deepspeed_slurm": True}, "deepspeed_slurm: true needs launcher: slurm"),
        ({"deepspeed_mpi": True, "launcher": "slurm"}, "deepspeed_mpi: true needs an MPI"),
        ({"comment": "c"}, "comment: only the slurm launcher passes it on"),
        ({"launcher": "openmpi", "num_gpus": 4}, "num_gpus: DeepSpeed's openmpi launcher cannot"),
    ],
)
def test_rejected_settings_name_the_key(keys: dict[str, object], fragment: str) -> None:
    with pytest.raises(LaunchError, match=fragment):
        runner_argv(SimpleNamespace(**keys), "t.py", [], environ={})


def test_all_problems_are_reported_at_once() -> None:
    keys = SimpleNamespace(launcher="mvapich", include="a", exclude="b", master_port=0)
    with pytest.raises(LaunchError) as info:
        runner_argv(keys, "t.py", [], environ={})
    message = str(info.value)
    assert "include, exclude: DeepSpeed's mvapich launcher cannot" in message
    assert "include and exclude are both set" in message
    assert "master_port: expected a TCP port in 1..65535, got 0" in message


def test_package_imports_neither_torch_nor_deepspeed() -> None:
    import subprocess
    import sys

    code = "import sys, megatron.launch; print(sorted({'torch', 'deepspeed'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
