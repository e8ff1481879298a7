"""What the loop reports every `log_interval`: loss, LR, grad norm, throughput and MFU.

Timings are averaged over the interval, so one slow step (a checkpoint, an evaluation)
does not make the printed tokens/s jump around. Each log line also carries the share of
step time spent waiting for data (rank 0's, the first pipeline stage, which loads the
inputs) and the peak resident memory, of this process and summed over all ranks: the
sum is one all_reduce per log line, so every rank must call `StepReporter.step` after
every step, as the loop does.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from megatron.model.flops import flops_per_iteration
from megatron.training import metrics as m
from megatron.training.norms import NormLogger
from megatron.training.profiling import Profiling, peak_rss_mb
from megatron.training.state import TrainState
from megatron.training.step import StepResult
from megatron.utils.throughput import peak_probe, resolve_peak_flops

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class StepReporter:
    """Accumulates step times and sends one record per log interval to the metrics sinks."""

    def __init__(self, run: Any, metrics: m.MetricsLogger) -> None:
        a = run.args
        self.run = run
        self.metrics = metrics
        self.flops = flops_per_iteration(
            run.spec, a.train_batch_size, a.seq_length, a.checkpoint_activations
        )
        self.peak: float | None = None
        if run.is_rank0:
            self.peak = resolve_peak_flops(
                getattr(a, "peak_theoretical_tflops", None),
                _DTYPES.get(a.precision, torch.float32),
                **peak_probe(run.engine.device),
            )
        self.started = time.perf_counter()
        self.window_seconds = 0.0
        self.window_data_seconds = 0.0
        self.window_steps = 0
        # log_param_norm / log_grad_norm / noise scale; profile, memory_profiling, timers.
        self.norms = NormLogger.from_run(run)
        self.profiling = Profiling.from_run(run, run.groups.layout.rank)

    def will_log(self, iteration: int) -> bool:
        """Whether `iteration` gets a log line (every log_interval, and iteration 1)."""
        return iteration % self.run.args.log_interval == 0 or iteration == 1

    def before_step(self, iteration: int) -> None:
        """Call before the step that becomes `iteration` (arms gradient capture, profiler)."""
        if self.norms is not None:
            self.norms.before_step(self.will_log(iteration))
        self.profiling.before_step(iteration)

    def close(self) -> None:
        """Flush a profiler window that training ended inside of."""
        self.profiling.close()

    def step(
        self, state: TrainState, result: StepResult, seconds: float, data_seconds: float = 0.0
    ) -> None:
        """Record one step; log when the interval is complete (and always at iteration 1).

        `seconds` is the step's wall time, `data_seconds` the part of it spent in `next(data)`.
        Call on every rank: a log line sums the peak RSS over ranks.
        """
        a = self.run.args
        self.window_seconds += seconds
        self.window_data_seconds += data_seconds
        self.window_steps += 1
        logging_now = self.will_log(state.iteration)
        extra = self.profiling.after_step(state.iteration, logging_now)
        if not logging_now:
            if extra:
                self.metrics.log(state.iteration, extra)
            return
        if self.norms is not None:
            extra.update(self.norms.metrics())
        mean = self.window_seconds / self.window_steps
        mean_data = self.window_data_seconds / self.window_steps
        self.window_seconds, self.window_data_seconds, self.window_steps = 0.0, 0.0, 0
        values = {
            m.LM_LOSS: result.loss,
            m.LEARNING_RATE: self.run.engine.get_lr()[0],
            m.GRAD_NORM: result.grad_norm,
            m.SKIPPED_ITERS: state.skipped_steps,
            m.CONSUMED_SAMPLES: state.consumed_samples,
            m.CONSUMED_TOKENS: state.consumed_samples * a.seq_length,
        }
        scale = getattr(self.run.engine.optimizer, "cur_scale", None)
        if a.precision == "fp16" and scale is not None:
            values[m.LOSS_SCALE] = scale
        values.update(self._runtime(state.iteration, mean, mean_data))
        self.metrics.log(state.iteration, {**values, **extra})

    def _runtime(self, iteration: int, mean: float, mean_data: float) -> dict[str, float]:
        """Throughput, MFU, data wait (from interval means) and peak RSS; one all_reduce."""
        a = self.run.args
        values = m.throughput_metrics(
            iteration=iteration,
            train_iters=a.train_iters,
            iteration_time=mean,
            global_batch_size=a.train_batch_size,
            seq_length=a.seq_length,
            flops_per_iteration=self.flops,
            num_processes=a.global_num_gpus,
            peak_flops_per_process=self.peak,
            elapsed=time.perf_counter() - self.started,
            data_time=mean_data,
        )
        values.update(memory_metrics(self.run.engine.device))
        return values


def sum_and_max_over_ranks(value: float, device: Any = "cpu") -> tuple[float, float]:
    """`value` summed and maximised over every rank of the default group (one all_reduce;
    ``(value, value)`` without distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value, value
    # The maximum as a sum: each rank puts its value in its own slot of a zero vector.
    slots = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=device)
    slots[dist.get_rank()] = value
    dist.all_reduce(slots)
    return float(slots.sum()), float(slots.max())


def memory_metrics(device: Any = "cpu") -> dict[str, float]:
    """This process's peak RSS, its sum and its maximum over ranks, in MiB (one all_reduce:
    all ranks call), and on a GPU this rank's peak of allocated device memory.

    The sum is what a machine running all ranks has to hold; on several nodes it adds up
    every node's ranks. The maximum is what the largest single process needs.
    """
    peak = peak_rss_mb()
    total, largest = sum_and_max_over_ranks(peak, device)
    values = {m.PEAK_RSS: peak, m.PEAK_RSS_ALL_RANKS: total, m.PEAK_RSS_MAX_RANK: largest}
    if torch.device(device).type == "cuda":
        values[m.PEAK_GPU_MEM] = torch.cuda.max_memory_allocated(device) / 2**20
    return values
