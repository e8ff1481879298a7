"""The process groups are destroyed when a run returns, and left alone when it raises."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from megatron.training import engine

# The module, not the package's lazy ``pretrain`` function of the same name.
pretrain_mod = importlib.import_module("megatron.training.pretrain")


def test_shutdown_destroys_the_default_group_and_is_idempotent(tmp_path: Path) -> None:
    assert not dist.is_initialized(), "another test left a process group behind"
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        t = torch.ones(3)
        dist.all_reduce(t)  # the group works before
        engine.shutdown_distributed()
        assert not dist.is_initialized()
        engine.shutdown_distributed()  # nothing left to destroy: no error
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("code", [0, 1])
def test_pretrain_shuts_down_after_any_return(monkeypatch: pytest.MonkeyPatch,
                                               code: int) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pretrain_mod, "_train_and_test",
                        lambda args, runner: calls.append("run") or code)
    monkeypatch.setattr(pretrain_mod, "shutdown_distributed", lambda: calls.append("shutdown"))
    assert pretrain_mod.pretrain(object()) == code
    assert calls == ["run", "shutdown"]


def test_pretrain_leaves_the_groups_when_the_run_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fail(args: object, runner: object) -> int:
        raise RuntimeError("a rank failed")

    monkeypatch.setattr(pretrain_mod, "_train_and_test", fail)
    monkeypatch.setattr(pretrain_mod, "shutdown_distributed", lambda: calls.append("shutdown"))
    with pytest.raises(RuntimeError, match="a rank failed"):
        pretrain_mod.pretrain(object())
    assert calls == []  # its peers may still be in a collective with it
