"""Workers' environment: the opt-in malloc tunables (allocator.py) and the torch thread count
deepy.py sets (threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import deepspeed.launcher.runner as ds_runner
import pytest

import deepy
from megatron.launch import WORKER_MALLOC_TUNABLES, allocator_env, thread_env, worker_exports

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


def test_tunables_only_when_enabled_and_not_chosen_by_the_user() -> None:
    assert allocator_env({}) == {"GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES}
    assert allocator_env({}, enabled=False) == {}
    assert allocator_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {}
    assert allocator_env({"GLIBC_TUNABLES": ""}) == {}
    assert "GLIBC_TUNABLES" in worker_exports({"GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES})


@pytest.mark.skipif(not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only")
def test_tunables_stop_large_tensors_from_faulting_in_again() -> None:
    # 128 MiB is 32768 pages of 4 KiB: glibc's default unmaps the block on free and the
    # next allocation faults every page in again; with the tunables the heap keeps it (and
    # what it must fault in comes in 2 MiB pages).
    default = _second_allocation_faults(None)
    tuned = _second_allocation_faults(WORKER_MALLOC_TUNABLES)
    assert default > 20_000
    assert tuned < default / 10


def test_workers_share_the_cores_unless_the_user_set_threads() -> None:
    assert thread_env({}, workers_per_node=2, cores=2) == {"OMP_NUM_THREADS": "1"}
    assert thread_env({}, workers_per_node=4, cores=16) == {"OMP_NUM_THREADS": "4"}
    assert thread_env({}, workers_per_node=8, cores=2) == {"OMP_NUM_THREADS": "1"}
    assert thread_env({}, workers_per_node=1, cores=2) == {}  # torch's default is right
    assert thread_env({"OMP_NUM_THREADS": "2"}, workers_per_node=2, cores=2) == {}


def _deepy_environment(monkeypatch: pytest.MonkeyPatch, configs: list[str],
                       keep: tuple[str, ...] = ()) -> dict[str, str]:
    """Run deepy.main with DeepSpeed's runner replaced; return what the runner would pass on."""
    seen: dict[str, str] = {}

    def fake_runner(argv: list[str]) -> int:
        for key in ("GLIBC_TUNABLES", "OMP_NUM_THREADS"):
            if key in os.environ and any(key.startswith(e) for e in ds_runner.EXPORT_ENVS):
                seen[key] = os.environ[key]
        return 0

    for key in {"GLIBC_TUNABLES", "OMP_NUM_THREADS"} - set(keep):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(ds_runner, "main", fake_runner)
    monkeypatch.setattr(ds_runner, "EXPORT_ENVS", list(ds_runner.EXPORT_ENVS))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert deepy.main(["train.py", *configs]) == 0
    return seen


def test_deepy_sets_threads_and_passes_the_users_tunables_on(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = str(REPO / "configs" / "bench" / "19M.yml")
    assert _deepy_environment(monkeypatch, [config]) == {}  # one worker, nothing chosen
    two = tmp_path / "two.yml"
    two.write_text("num_gpus: 2\n")
    assert _deepy_environment(monkeypatch, [config, str(two)]) == {"OMP_NUM_THREADS": "2"}
    monkeypatch.setenv("GLIBC_TUNABLES", WORKER_MALLOC_TUNABLES)
    assert _deepy_environment(monkeypatch, [config], keep=("GLIBC_TUNABLES",)) == {
        "GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES}
