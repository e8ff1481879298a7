"""Workers' environment as deepy.py sets it: the allocator and malloc tunables (allocator.py)
and the torch thread count (threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import deepspeed.launcher.runner as ds_runner
import pytest

import deepy
from megatron.launch import WORKER_MALLOC_TUNABLES, allocator_env, thread_env, worker_exports
from megatron.launch.allocator import JEMALLOC_CONF

REPO = Path(__file__).resolve().parents[2]

# Minor page faults of 3 training-like steps after 3 warm-up ones: an MLP on 4096 tokens,
# whose [4096, 2048] fp32 activations and gradients are 33.5 MB blocks.
_STEP_FAULTS = """
import resource, torch
torch.set_num_threads(1)
lin1, lin2 = torch.nn.Linear(256, 2048), torch.nn.Linear(2048, 256)
x = torch.randn(4096, 256)
def step():
    lin2(torch.nn.functional.gelu(lin1(x))).sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

# Allocate, touch and free a 128 MiB tensor twice; the minor page faults of the second.
_LARGE_FAULTS = """
import resource, torch
x = torch.ones(32 * 2**20)
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(32 * 2**20)
del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(code: str, tunables: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return int(out.split()[-1])


def no_jemalloc(environ: object) -> None:
    return None


def test_tunables_only_when_enabled_and_not_chosen_by_the_user() -> None:
    assert allocator_env({}, find=no_jemalloc) == {"GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES}
    assert allocator_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, find=no_jemalloc) == {}
    assert allocator_env({"GLIBC_TUNABLES": ""}, find=no_jemalloc) == {}
    assert "GLIBC_TUNABLES" in worker_exports({"GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES})


@pytest.mark.skipif(not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only")
def test_tunables_reuse_mid_sized_blocks_and_still_unmap_large_ones() -> None:
    # By default glibc maps each 33.5 MB block (above its 32 MiB adaptive cap) afresh and
    # the kernel faults and zeroes every 4 KiB page of it: ~98k faults for 3 steps here.
    # With the tunables the heap's blocks are reused (measured: 0-16k).
    default = _faults(_STEP_FAULTS, None)
    tuned = _faults(_STEP_FAULTS, WORKER_MALLOC_TUNABLES)
    assert default > 50_000
    assert tuned < default / 4
    # Above 64 MiB blocks are still mapped and unmapped (32768 pages), not kept in the heap.
    assert _faults(_LARGE_FAULTS, WORKER_MALLOC_TUNABLES) > 30_000


def test_workers_share_the_cores_unless_the_user_set_threads() -> None:
    assert thread_env({}, workers_per_node=2, cores=2) == {"OMP_NUM_THREADS": "1"}
    assert thread_env({}, workers_per_node=4, cores=16) == {"OMP_NUM_THREADS": "4"}
    assert thread_env({}, workers_per_node=8, cores=2) == {"OMP_NUM_THREADS": "1"}
    assert thread_env({}, workers_per_node=1, cores=2) == {}  # torch's default is right
    assert thread_env({"OMP_NUM_THREADS": "2"}, workers_per_node=2, cores=2) == {}


WATCHED = ("GLIBC_TUNABLES", "OMP_NUM_THREADS", "LD_PRELOAD", "MALLOC_CONF")


def _deepy_environment(monkeypatch: pytest.MonkeyPatch, configs: list[str],
                       keep: tuple[str, ...] = ()) -> dict[str, str]:
    """Run deepy.main with DeepSpeed's runner replaced; return what the runner would pass on."""
    seen: dict[str, str] = {}

    def fake_runner(argv: list[str]) -> int:
        for key in WATCHED:
            if key in os.environ and any(key.startswith(e) for e in ds_runner.EXPORT_ENVS):
                seen[key] = os.environ[key]
        return 0

    for key in set(WATCHED) - set(keep):
        monkeypatch.setenv(key, "")  # records the value to restore: deepy sets os.environ
        monkeypatch.delenv(key)
    monkeypatch.setattr(ds_runner, "main", fake_runner)
    monkeypatch.setattr(ds_runner, "EXPORT_ENVS", list(ds_runner.EXPORT_ENVS))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert deepy.main(["train.py", *configs]) == 0
    return seen


def test_deepy_sets_threads_and_tunables_unless_the_user_chose(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = str(REPO / "configs" / "bench" / "19M.yml")
    monkeypatch.setenv("MEGATRON_ALLOCATOR", "glibc")
    tuned = {"GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES}
    assert _deepy_environment(monkeypatch, [config]) == tuned  # one worker: torch's threads
    two = tmp_path / "two.yml"
    two.write_text("num_gpus: 2\n")
    assert _deepy_environment(monkeypatch, [config, str(two)]) == {
        **tuned, "OMP_NUM_THREADS": "2"}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert _deepy_environment(monkeypatch, [config], keep=("GLIBC_TUNABLES",)) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}


def test_deepy_gives_the_workers_jemalloc_when_it_has_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = str(REPO / "configs" / "bench" / "19M.yml")
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")  # deepy only checks that it exists; the runner is a fake here
    monkeypatch.setenv("MEGATRON_JEMALLOC", str(library))
    assert _deepy_environment(monkeypatch, [config]) == {
        "LD_PRELOAD": str(library), "MALLOC_CONF": JEMALLOC_CONF}


def test_deepy_stops_on_a_bad_allocator_choice(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MEGATRON_ALLOCATOR", "tcmalloc")
    monkeypatch.setattr(ds_runner, "main", lambda argv: pytest.fail("launched anyway"))
    assert deepy.main(["train.py", str(REPO / "configs" / "bench" / "19M.yml")]) == 2
    err = capsys.readouterr().err
    assert "MEGATRON_ALLOCATOR='tcmalloc'" in err and "jemalloc" in err
