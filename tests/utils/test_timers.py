"""Timers with a fake clock, so the expected milliseconds are exact."""

import pytest

from megatron.utils import timers as timers_module
from megatron.utils.timers import TimerError, Timers


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [0.0]
    monkeypatch.setattr(timers_module.time, "perf_counter", lambda: now[0])
    return now


def test_accumulates_and_normalises(clock: list[float]) -> None:
    timers = Timers()
    for duration in (0.010, 0.030):
        timers("forward").start()
        clock[0] += duration
        timers("forward").stop()
        clock[0] += 1.0  # time outside the timer does not count
    with timers("optimizer"):
        clock[0] += 0.005
    assert timers.as_metrics(normalizer=2) == {
        "timers/forward": pytest.approx(20.0), "timers/optimizer": pytest.approx(2.5)}
    assert timers.elapsed_ms() == {"forward": 0.0, "optimizer": 0.0}  # reset by the read


def test_running_timer_reports_partial_time_and_log_string(clock: list[float]) -> None:
    timers = Timers()
    timers("batch generator").start()
    clock[0] += 0.25
    assert timers.log_string(reset=False) == "time (ms) | batch generator: 250.00"
    assert timers("batch generator").running


def test_synchronize_called_on_start_and_stop(clock: list[float]) -> None:
    calls = []
    timers = Timers(synchronize=lambda: calls.append(1))
    with timers("backward"):
        pass
    assert len(calls) == 2


def test_misuse_raises() -> None:
    timers = Timers()
    with pytest.raises(TimerError, match="'x' was stopped without start"):
        timers("x").stop()
    timers("x").start()
    with pytest.raises(TimerError, match="'x' was started twice"):
        timers("x").start()
