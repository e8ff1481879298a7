"""Data-wait fraction and peak RSS: counted by the loop, logged per interval, summed over ranks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from megatron.data.iterator import TimedIterator
from megatron.model import ModelSpec
from megatron.training.loop import timed_step
from megatron.training.metrics import (
    DATA_WAIT_FRACTION,
    PEAK_RSS,
    PEAK_RSS_ALL_RANKS,
    PEAK_RSS_MAX_RANK,
)
from megatron.training.reporting import StepReporter, memory_metrics, sum_and_max_over_ranks
from megatron.training.state import TrainState
from megatron.training.step import StepResult
from tests.distributed import run_distributed

WAIT = 0.05  # seconds each batch takes to arrive


def _slow_batches() -> Iterator[tuple]:
    while True:
        time.sleep(WAIT)
        yield (torch.ones(1, 2), torch.zeros(1, 2)), (torch.ones(1, 2), torch.ones(1, 2))


class PlainEngine:
    """The calls train_step makes on DeepSpeed's engine, with no work behind them."""

    device = "cpu"

    def gradient_accumulation_steps(self) -> int:
        return 2

    def __call__(self, inputs: tuple) -> torch.Tensor:
        return inputs[0].sum()

    def backward(self, loss: torch.Tensor) -> None:
        pass

    def step(self) -> None:
        pass

    def get_global_grad_norm(self) -> float:
        return 1.0

    def was_step_applied(self) -> bool:
        return True


class PipeEngine(PlainEngine):
    """The pipeline engine draws its own micro-batches inside train_batch."""

    def train_batch(self, data_iter: Iterator[tuple]) -> torch.Tensor:
        for _ in range(self.gradient_accumulation_steps()):
            next(data_iter)
        return torch.tensor(2.0)


def _step_run(is_pipe: bool) -> SimpleNamespace:
    return SimpleNamespace(
        engine=PipeEngine() if is_pipe else PlainEngine(),
        is_pipe=is_pipe,
        loss_fn=lambda output, labels: output,
        groups=SimpleNamespace(dp=SimpleNamespace(size=1, group=None)),
        guard=None,
    )


@pytest.mark.parametrize("is_pipe", [False, True])
def test_timed_step_counts_the_wait_for_both_engines(is_pipe: bool) -> None:
    data = TimedIterator(_slow_batches())
    next(data)  # time spent before the step is not the step's
    result, seconds, waited = timed_step(_step_run(is_pipe), data)
    assert result.loss == pytest.approx(2.0) and not result.skipped
    assert 2 * WAIT <= waited <= seconds  # two micro-batches, each WAIT late
    assert data.waited == pytest.approx(waited + WAIT, abs=0.02)


def _reporter_run(log_interval: int) -> SimpleNamespace:
    args = SimpleNamespace(
        log_interval=log_interval, train_batch_size=4, seq_length=8, train_iters=10,
        checkpoint_activations=False, precision="fp32", peak_theoretical_tflops=1.0,
        global_num_gpus=1, log_gradient_noise_scale=False, log_param_norm=False,
        log_grad_norm=False, profile=False, memory_profiling=False, wall_clock_breakdown=False,
    )
    spec = ModelSpec(hidden_size=32, num_layers=2, num_attention_heads=4, padded_vocab_size=64,
                     seq_length=8)
    engine = SimpleNamespace(get_lr=lambda: [1e-3], optimizer=None, device="cpu")
    return SimpleNamespace(args=args, spec=spec, engine=engine, is_rank0=True,
                           groups=SimpleNamespace(layout=SimpleNamespace(rank=0)))


class Recorder:
    def __init__(self) -> None:
        self.lines: dict[int, dict[str, Any]] = {}

    def log(self, iteration: int, values: dict[str, Any]) -> None:
        self.lines[iteration] = dict(values)


def test_reporter_logs_data_wait_over_the_interval_and_peak_rss() -> None:
    recorder = Recorder()
    reporter = StepReporter(_reporter_run(log_interval=4), recorder)
    state = TrainState()
    result = StepResult(loss=2.0, grad_norm=1.0, skipped=False)
    # (step seconds, data seconds) for iterations 1..4; 1 is logged alone, then 2-4 together.
    for seconds, data in ((2.0, 0.5), (1.0, 0.0), (1.0, 0.1), (2.0, 0.3)):
        state.iteration += 1
        reporter.step(state, result, seconds, data)
    assert sorted(recorder.lines) == [1, 4]
    assert recorder.lines[1][DATA_WAIT_FRACTION] == pytest.approx(0.25)
    assert recorder.lines[4][DATA_WAIT_FRACTION] == pytest.approx(0.4 / 4.0)
    assert recorder.lines[4]["runtime/iteration_time"] == pytest.approx(4.0 / 3)
    for line in recorder.lines.values():
        assert line[PEAK_RSS] > 0
        assert line[PEAK_RSS_ALL_RANKS] == line[PEAK_RSS_MAX_RANK] == line[PEAK_RSS]


def _sums_over_two_ranks(rank: int, world_size: int) -> None:
    assert sum_and_max_over_ranks(3.0 - 2.5 * rank) == (3.5, 3.0)  # 3.0 and 0.5
    assert sum_and_max_over_ranks(-1.0 - rank) == (-3.0, -1.0)  # negative values too
    if rank == 1:  # so that the two peaks differ (by how much depends on what ran before)
        ballast = bytearray(200 * 2**20)
        ballast[::4096] = b"x" * len(ballast[::4096])
    memory = memory_metrics()
    mine, others = memory[PEAK_RSS], memory[PEAK_RSS_ALL_RANKS] - memory[PEAK_RSS]
    assert memory[PEAK_RSS_MAX_RANK] == pytest.approx(max(mine, others), abs=1e-6)
    assert 0.4 * mine < others < 2.5 * mine  # each rank holds about as much as the other


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_peak_rss_is_summed_and_maximised_over_ranks() -> None:
    run_distributed(_sums_over_two_ranks, world_size=2, timeout=100)
