"""What the loop reports every `log_interval`: loss, LR, grad norm, throughput and MFU.

Timings are averaged over the interval, so one slow step (a checkpoint, an evaluation)
does not make the printed tokens/s jump around.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from megatron.model.flops import flops_per_iteration
from megatron.training import metrics as m
from megatron.training.state import TrainState
from megatron.training.step import StepResult
from megatron.utils.throughput import resolve_peak_flops

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
                getattr(a, "peak_theoretical_tflops", None), _DTYPES.get(a.precision, torch.float32)
            )
        self.started = time.perf_counter()
        self.window_seconds = 0.0
        self.window_steps = 0

    def step(self, state: TrainState, result: StepResult, seconds: float) -> None:
        """Record one step; log when the interval is complete (and always at iteration 1)."""
        a = self.run.args
        self.window_seconds += seconds
        self.window_steps += 1
        if state.iteration % a.log_interval and state.iteration != 1:
            return
        mean = self.window_seconds / self.window_steps
        self.window_seconds, self.window_steps = 0.0, 0
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
        values.update(
            m.throughput_metrics(
                iteration=state.iteration,
                train_iters=a.train_iters,
                iteration_time=mean,
                global_batch_size=a.train_batch_size,
                seq_length=a.seq_length,
                flops_per_iteration=self.flops,
                num_processes=a.global_num_gpus,
                peak_flops_per_process=self.peak,
                elapsed=time.perf_counter() - self.started,
            )
        )
        self.metrics.log(state.iteration, values)
