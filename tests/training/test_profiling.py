"""The profiler window, the CPU memory-profiling fallback and the engine step timers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from megatron.training.profiling import (
    PEAK_RSS,
    MemoryProfiler,
    Profiling,
    ProfilingError,
    StepProfiler,
    time_engine,
    time_loss,
    trace_path,
)
from megatron.utils.timers import Timers


def _event_names(path: Path) -> set[str]:
    return {e.get("name") for e in json.loads(path.read_text())["traceEvents"]}


def test_trace_covers_exactly_the_configured_iterations(tmp_path: Path) -> None:
    prof = StepProfiler(tmp_path, start=2, stop=3, rank=0)
    for it in range(1, 6):
        prof.before_step(it)
        with torch.profiler.record_function(f"marker_iter{it}"):
            torch.ones(8).sum()
        prof.after_step(it)
    path = tmp_path / "profile" / "rank0_iters2-3.pt.trace.json"
    assert path == trace_path(tmp_path, 0, 2, 3) and path.is_file()
    names = _event_names(path)
    assert {"marker_iter2", "marker_iter3"} <= names
    assert not names & {"marker_iter1", "marker_iter4", "marker_iter5"}


def test_close_writes_a_window_training_ended_inside(tmp_path: Path) -> None:
    prof = StepProfiler(tmp_path, start=1, stop=10, rank=3)
    prof.before_step(1)
    prof.after_step(1)
    assert not trace_path(tmp_path, 3, 1, 10).exists()
    prof.close()
    assert trace_path(tmp_path, 3, 1, 10).is_file()


def test_an_empty_window_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProfilingError, match="profile_step_start=5 and profile_step_stop=4"):
        StepProfiler(tmp_path, start=5, stop=4, rank=0)


def test_memory_profiling_on_cpu_warns_and_reports_peak_rss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        mem = MemoryProfiler(str(tmp_path), stop=2, rank=0, cuda=False)
    assert "need a GPU" in caplog.text
    assert mem.after_step(1) == {}
    out = mem.after_step(2)
    # Independent reading: the kernel's high-water mark of resident memory, in kB.
    status = Path("/proc/self/status").read_text().splitlines()
    hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    assert out[PEAK_RSS] == pytest.approx(hwm_kb / 1024.0, rel=0.02)
    assert mem.after_step(3) == {}, "reported once"


def test_peak_rss_is_the_programs_own_not_its_parents() -> None:
    """A process started from a large one reports its own peak: ``ru_maxrss`` would carry
    the parent's 1.5 GiB across ``exec`` (the launcher's, or this test runner's)."""
    ballast = torch.ones(1536 * 2**20 // 4)  # 1.5 GiB, touched, in this process
    code = ("import torch; from megatron.training.profiling import peak_rss_mb; "
            "x = torch.ones(256 * 2**20 // 4); print(peak_rss_mb())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    child = float(done.stdout.split()[-1])
    assert 256 < child < 1200, child  # its 256 MiB and torch's few hundred, not 1.5 GiB more
    assert float(ballast[-1]) == 1.0


def test_memory_profiling_needs_a_path() -> None:
    with pytest.raises(ProfilingError, match="memory_profiling_path"):
        MemoryProfiler(None, stop=2, rank=0, cuda=False)


class _Engine:
    def forward(self, x: float) -> float:
        time.sleep(0.02)
        return x * 2

    def backward(self, loss: float) -> None:
        time.sleep(0.01)

    def step(self) -> None:
        return None


def _loss(output: float, label: float) -> float:
    time.sleep(0.03)  # the fused output layer and cross entropy live here
    return output - label


def test_engine_phases_and_the_loss_are_timed_and_reported_per_step() -> None:
    engine, timers = _Engine(), Timers()
    run = SimpleNamespace(engine=engine, loss_fn=_loss, is_pipe=False)
    time_engine(engine, timers, is_pipe=False)
    time_loss(run, timers)
    prof = Profiling(timers=timers)
    for it in (1, 2):
        loss = run.loss_fn(engine.forward(3.0), 1.0)
        assert loss == 5.0
        engine.backward(loss)
        engine.step()
        out = prof.after_step(it, will_log=(it == 2))
    assert set(out) == {"timers/forward", "timers/backward", "timers/optimizer"}
    # milliseconds per step, over 2 steps: forward 20 ms + loss 30 ms
    assert 50.0 <= out["timers/forward"] < 250.0
    assert 10.0 <= out["timers/backward"] < 50.0


def test_profiling_from_run_without_output_dirs_warns(caplog: pytest.LogCaptureFixture) -> None:
    args = SimpleNamespace(profile=True, tensorboard_dir=None, log_dir=None,
                           profile_step_start=1, profile_step_stop=2, memory_profiling=False,
                           wall_clock_breakdown=False)
    with caplog.at_level(logging.WARNING):
        prof = Profiling.from_run(SimpleNamespace(args=args, engine=None, is_pipe=False), 0)
    assert prof.trace is None and "no trace is written" in caplog.text
