"""Which variables reach workers, and the .deepspeed_env file DeepSpeed reads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from megatron.launch import LaunchError, export_env, redact, worker_exports, write_deepspeed_env

ENV = {
    "WANDB_API_KEY": "secret",
    "WANDB_MODE": "offline",
    "HF_HOME": "/cache/hf",
    "TORCH_EXTENSIONS_DIR": "/cache/ext",
    "NCCL_DEBUG": "INFO",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "RANK": "3",
    "HOME": "/home/u",
    "PATH": "/usr/bin",
}


def test_worker_exports_picks_prefixed_and_named_variables() -> None:
    assert worker_exports(ENV) == {
        "HF_HOME": "/cache/hf",
        "NCCL_DEBUG": "INFO",
        "TORCH_EXTENSIONS_DIR": "/cache/ext",
        "WANDB_API_KEY": "secret",
        "WANDB_MODE": "offline",
    }
    assert worker_exports(ENV, prefixes=(), names=["PATH", "CUDA_VISIBLE_DEVICES"]) == {
        "PATH": "/usr/bin"
    }


def test_worker_exports_rejects_multiline_values() -> None:
    with pytest.raises(LaunchError, match="WANDB_NOTES holds a newline"):
        worker_exports({"WANDB_NOTES": "a\nb"})


def test_export_env_extends_deepspeed_list_once() -> None:
    export_list = ["MLFLOW", "PYTHON", "MV2", "UCX"]
    added = export_env(export_list, ["WANDB_API_KEY", "PYTHONHASHSEED", "HF_HOME"])
    assert added == ["WANDB_API_KEY", "HF_HOME"]
    assert export_env(export_list, ["WANDB_API_KEY"]) == []
    assert export_list == ["MLFLOW", "PYTHON", "MV2", "UCX", "WANDB_API_KEY", "HF_HOME"]
    with pytest.raises(LaunchError, match="'BAD NAME'"):
        export_env(export_list, ["BAD NAME"])


def _deepspeed_reads(path: Path) -> dict[str, str]:
    """The loop deepspeed.launcher.runner.main runs over each line of the file."""
    found = {}
    for line in path.read_text().splitlines(keepends=True):
        key, val = line.split("=", maxsplit=1)
        found[key.strip()] = val.strip()
    return found


def test_write_deepspeed_env_merges_and_is_private(tmp_path: Path) -> None:
    target = tmp_path / ".deepspeed_env"
    target.write_text("NCCL_IB_DISABLE=1\n\nbroken line\nWANDB_MODE=online\n")
    write_deepspeed_env({"WANDB_MODE": "offline", "WANDB_API_KEY": "k=v"}, target)
    assert target.read_text() == "NCCL_IB_DISABLE=1\nWANDB_MODE=offline\nWANDB_API_KEY=k=v\n"
    assert _deepspeed_reads(target) == {
        "NCCL_IB_DISABLE": "1",
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": "k=v",
    }
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not (tmp_path / ".deepspeed_env.tmp").exists()


def test_write_deepspeed_env_rejects_bad_entries(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="'A-B'"):
        write_deepspeed_env({"A-B": "1"}, tmp_path / "env")


def test_redact_masks_secret_looking_names() -> None:
    assert redact({"WANDB_API_KEY": "s", "HF_TOKEN": "t", "WANDB_MODE": "offline"}) == {
        "WANDB_API_KEY": "***",
        "HF_TOKEN": "***",
        "WANDB_MODE": "offline",
    }
