"""Profiling hooks for the training loop: ``profile``, ``memory_profiling`` and step timers.

GPT-NeoX's ``profile`` brackets iterations ``profile_step_start`` .. ``profile_step_stop``
with ``cudaProfilerStart/Stop`` for an external ``nsys``. That needs CUDA and a wrapper
around the launcher, so here the same window is recorded with ``torch.profiler`` instead,
on CPU and GPU alike, and each rank writes one Chrome/Perfetto trace
(``<tensorboard_dir or log_dir>/profile/rank<R>_iters<A>-<B>.pt.trace.json``).
On CUDA the window is also marked for ``nsys --capture-range=cudaProfilerApi``.

``memory_profiling`` records CUDA allocator history from the first step and writes
``<memory_profiling_path>/mem_snapshot.pickle`` (other ranks: ``mem_snapshot_rank<R>``)
after ``profile_step_stop``, as GPT-NeoX does; open it at https://pytorch.org/memory_viz.
There is no allocator history on CPU, so there it warns once and logs the peak resident
set size instead.

``wall_clock_breakdown`` makes DeepSpeed print its own timers; ``StepTimers`` also times
our phases (batch loading, forward, backward, optimizer) and reports them as ``timers/*``.
"""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from megatron.training.metrics import PEAK_RSS
from megatron.utils.timers import Timers

LOG = logging.getLogger(__name__)


class ProfilingError(ValueError):
    """A profiling key is set without what it needs (a window or an output path)."""


def trace_path(base: str | Path, rank: int, start: int, stop: int) -> Path:
    """Where rank ``rank`` writes the trace of iterations ``start`` .. ``stop``."""
    return Path(base) / "profile" / f"rank{rank}_iters{start}-{stop}.pt.trace.json"


def peak_rss_mb() -> float:
    """Peak resident set size of this process's program in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``, the peak of the address space the
    program has had since ``exec``. ``ru_maxrss`` also keeps the peak of the image the
    process replaced: a worker forked and exec'd from a 1.5 GB parent (a test runner, a
    launcher that imported torch) reports at least 1.5 GB whatever it uses itself. Elsewhere,
    ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _status_kib(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status``; None where there is no such file or field."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class StepProfiler:
    """``torch.profiler`` over iterations ``start`` .. ``stop`` (both included).

    Args:
        base: folder under which ``profile/`` is created.
        start: first profiled iteration (1-based, as the loop counts).
        stop: last profiled iteration.
        rank: this process's global rank, in the file name.
    """

    def __init__(self, base: str | Path, start: int, stop: int, rank: int) -> None:
        if not 1 <= start <= stop:
            raise ProfilingError(
                f"profile_step_start={start} and profile_step_stop={stop}: need "
                f"1 <= profile_step_start <= profile_step_stop"
            )
        self.path = trace_path(base, rank, start, stop)
        self.start, self.stop = start, stop
        self._prof: torch.profiler.profile | None = None

    def before_step(self, iteration: int) -> None:
        """Start recording when ``iteration`` is the first of the window."""
        if iteration != self.start or self._prof is not None:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.cudart().cudaProfilerStart()
        self._prof = torch.profiler.profile(activities=activities, record_shapes=True)
        self._prof.__enter__()

    def after_step(self, iteration: int) -> None:
        """Stop and write the trace after the last iteration of the window."""
        if iteration >= self.stop:
            self.close()

    def close(self) -> None:
        """Stop early (training ended inside the window) and write what was recorded."""
        if self._prof is None:
            return
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        if torch.cuda.is_available():
            torch.cuda.cudart().cudaProfilerStop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.path))
        LOG.info("profiler trace written to %s", self.path)


class MemoryProfiler:
    """CUDA allocator history from the first step, dumped after iteration ``stop``.

    Args:
        path: ``memory_profiling_path``; the folder for the snapshot.
        stop: the iteration after which the snapshot is written (``profile_step_stop``).
        rank: global rank, in the file name of ranks other than 0.
        cuda: whether CUDA is in use; without it only the peak RSS is reported.
    """

    def __init__(self, path: str | None, stop: int, rank: int, cuda: bool) -> None:
        if not path:
            raise ProfilingError(
                "memory_profiling: true needs memory_profiling_path (the folder for "
                "mem_snapshot.pickle)"
            )
        name = "mem_snapshot.pickle" if rank == 0 else f"mem_snapshot_rank{rank}.pickle"
        self.path = Path(path) / name
        self.stop, self.cuda, self.done = stop, cuda, False
        if cuda:
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        elif rank == 0:
            LOG.warning(
                "memory_profiling: CUDA memory snapshots need a GPU; on CPU only the peak "
                "resident memory is logged (%s)", PEAK_RSS
            )

    def after_step(self, iteration: int) -> dict[str, float]:
        """Write the snapshot once ``stop`` is reached; returns the peak-RSS metric on CPU."""
        if self.done or iteration < self.stop:
            return {}
        self.done = True
        if not self.cuda:
            peak = peak_rss_mb()
            LOG.info("iteration %d: peak resident memory %.1f MiB", iteration, peak)
            return {PEAK_RSS: peak}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.cuda.memory._dump_snapshot(str(self.path))
        torch.cuda.memory._record_memory_history(enabled=None)
        LOG.info("CUDA memory snapshot written to %s", self.path)
        return {}


# Our names for the phases, as GPT-NeoX names its timers.
_PLAIN_PHASES = {"forward": "forward", "backward": "backward", "step": "optimizer"}


def time_engine(engine: Any, timers: Timers, is_pipe: bool) -> None:
    """Wrap the engine's per-phase methods so each call runs inside its timer.

    The plain engine is driven by us (forward, backward, step per micro-batch); the pipeline
    engine runs its own schedule inside ``train_batch``, which is timed as one phase
    (DeepSpeed's ``wall_clock_breakdown`` prints its inner timers).
    """
    phases = {"train_batch": "train_batch"} if is_pipe else _PLAIN_PHASES
    for method, name in phases.items():
        setattr(engine, method, _timed(getattr(engine, method), timers, name))


def time_loss(run: Any, timers: Timers) -> None:
    """Count the plain engine's loss function as forward time, as GPT-NeoX's timer does.

    The fused output layer and cross entropy run there, outside ``engine.forward``: without
    this, ``timers/forward`` left out about 60% of a 19M-shape forward on a CPU.
    """
    if not run.is_pipe:
        run.loss_fn = _timed(run.loss_fn, timers, "forward")


def _timed(fn: Callable[..., Any], timers: Timers, name: str) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        with timers(name):
            return fn(*args, **kwargs)

    return run


class Profiling:
    """Everything above, driven by the loop: ``before_step``, ``after_step``, ``close``."""

    def __init__(
        self,
        trace: StepProfiler | None = None,
        memory: MemoryProfiler | None = None,
        timers: Timers | None = None,
    ) -> None:
        self.trace, self.memory, self.timers = trace, memory, timers
        self._steps = 0

    @classmethod
    def from_run(cls, run: Any, rank: int) -> Profiling:
        """Built from ``profile*``, ``memory_profiling*`` and ``wall_clock_breakdown``."""
        a = run.args
        trace = memory = timers = None
        if a.profile:
            base = a.tensorboard_dir or a.log_dir
            if base:
                trace = StepProfiler(base, a.profile_step_start, a.profile_step_stop, rank)
            elif rank == 0:
                LOG.warning("profile: true but neither tensorboard_dir nor log_dir is set; "
                            "no trace is written")
        if a.memory_profiling:
            cuda = torch.cuda.is_available()
            memory = MemoryProfiler(a.memory_profiling_path, a.profile_step_stop, rank, cuda)
        if a.wall_clock_breakdown:
            sync = torch.cuda.synchronize if torch.cuda.is_available() else None
            timers = Timers(sync)
            time_engine(run.engine, timers, run.is_pipe)
            time_loss(run, timers)
        return cls(trace, memory, timers)

    def before_step(self, iteration: int) -> None:
        """Called before the step that will be ``iteration``."""
        if self.trace is not None:
            self.trace.before_step(iteration)

    def after_step(self, iteration: int, will_log: bool) -> dict[str, float]:
        """Called after the step; returns metrics for this iteration's log line."""
        self._steps += 1
        if self.trace is not None:
            self.trace.after_step(iteration)
        out = self.memory.after_step(iteration) if self.memory is not None else {}
        if will_log and self.timers is not None:
            out.update(self.timers.as_metrics(normalizer=self._steps))
            self._steps = 0
        return out

    def close(self) -> None:
        """Write a trace whose window training did not reach the end of."""
        if self.trace is not None:
            self.trace.close()
