"""The malloc settings deepy.py gives its workers (megatron/launch/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import deepspeed.launcher.runner as ds_runner
import pytest

import deepy
from megatron.launch import WORKER_MALLOC_TUNABLES, allocator_env, worker_exports

REPO = Path(__file__).resolve().parents[2]

# Allocate, touch and free a 128 MiB tensor twice; print the minor page faults of the second.
_FAULTS = """
import resource, torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(32 * 2**20)
del x
before = faults()
x = torch.ones(32 * 2**20)
del x
print(faults() - before)
"""


def _second_allocation_faults(tunables: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return int(out.split()[-1])


def test_workers_get_the_tunables_unless_the_user_set_them() -> None:
    assert allocator_env({}) == {"GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES}
    assert allocator_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {}
    assert allocator_env({"GLIBC_TUNABLES": ""}) == {}  # empty: the user turned it off
    assert "GLIBC_TUNABLES" in worker_exports({"GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES})


@pytest.mark.skipif(not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only")
def test_tunables_stop_large_tensors_from_faulting_in_again() -> None:
    # 128 MiB is 32768 pages of 4 KiB: glibc's default unmaps the block on free and the
    # next allocation faults every page in again; with the tunables the heap keeps it.
    default = _second_allocation_faults(None)
    tuned = _second_allocation_faults(WORKER_MALLOC_TUNABLES)
    assert default > 20_000
    assert tuned < default / 10


def test_deepy_hands_the_tunables_to_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, str | None] = {}

    def fake_runner(argv: list[str]) -> int:
        seen["env"] = os.environ.get("GLIBC_TUNABLES")
        seen["exported"] = str(any("GLIBC_TUNABLES".startswith(e) for e in ds_runner.EXPORT_ENVS))
        return 0

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(ds_runner, "main", fake_runner)
    monkeypatch.setattr(ds_runner, "EXPORT_ENVS", list(ds_runner.EXPORT_ENVS))
    config = str(REPO / "configs" / "bench" / "19M.yml")
    assert deepy.main(["train.py", config]) == 0
    assert seen == {"env": WORKER_MALLOC_TUNABLES, "exported": "True"}
