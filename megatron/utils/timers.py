"""Named wall-clock timers for the per-phase breakdown (``wall_clock_breakdown``).

A training step has phases (forward, backward, optimizer, batch generator); the loop wraps
each in ``timers("forward")`` and the logger reports the mean per iteration. On a GPU the
caller passes ``synchronize=torch.cuda.synchronize`` so a timer measures finished kernels,
not launches; on CPU nothing needs synchronising.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import TracebackType


class TimerError(RuntimeError):
    """A timer was started twice or stopped while not running."""


class Timer:
    """One accumulating stopwatch; ``elapsed`` returns seconds summed over start/stop pairs."""

    def __init__(self, name: str, synchronize: Callable[[], None] | None = None) -> None:
        self.name = name
        self._sync = synchronize
        self._total = 0.0
        self._started_at: float | None = None

    @property
    def running(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._started_at is not None

    def start(self) -> None:
        """Start the stopwatch; starting a running timer is a bug in the caller."""
        if self._started_at is not None:
            raise TimerError(f"timer {self.name!r} was started twice without stop()")
        if self._sync is not None:
            self._sync()
        self._started_at = time.perf_counter()

    def stop(self) -> None:
        """Stop the stopwatch and add the interval to the total."""
        if self._started_at is None:
            raise TimerError(f"timer {self.name!r} was stopped without start()")
        if self._sync is not None:
            self._sync()
        self._total += time.perf_counter() - self._started_at
        self._started_at = None

    def reset(self) -> None:
        """Forget the accumulated time (a running timer keeps running from now)."""
        self._total = 0.0
        if self._started_at is not None:
            self._started_at = time.perf_counter()

    def elapsed(self, reset: bool = True) -> float:
        """Seconds accumulated so far, including the current interval when running."""
        total = self._total
        if self._started_at is not None:
            total += time.perf_counter() - self._started_at
        if reset:
            self.reset()
        return total

    def __enter__(self) -> Timer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Timers:
    """A registry of named :class:`Timer` objects, created on first use.

    Example:
        ``with timers("forward"): loss = model(batch)`` and later
        ``metrics.log(it, timers.as_metrics(["forward"], normalizer=log_interval))``.
    """

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self._sync = synchronize
        self._timers: dict[str, Timer] = {}

    def __call__(self, name: str) -> Timer:
        """Return the timer called ``name``, creating it when new."""
        if name not in self._timers:
            self._timers[name] = Timer(name, self._sync)
        return self._timers[name]

    def __contains__(self, name: str) -> bool:
        return name in self._timers

    @property
    def names(self) -> list[str]:
        """Timer names in creation order."""
        return list(self._timers)

    def elapsed_ms(
        self, names: Iterable[str] | None = None, normalizer: float = 1.0, reset: bool = True
    ) -> dict[str, float]:
        """Milliseconds per ``normalizer`` (usually iterations) for each known name."""
        if normalizer <= 0:
            raise ValueError(f"normalizer must be positive, got {normalizer}")
        chosen = self.names if names is None else [n for n in names if n in self._timers]
        return {n: self._timers[n].elapsed(reset=reset) * 1000.0 / normalizer for n in chosen}

    def as_metrics(
        self, names: Iterable[str] | None = None, normalizer: float = 1.0, reset: bool = True
    ) -> dict[str, float]:
        """Like :meth:`elapsed_ms` but keyed ``timers/<name>`` as GPT-NeoX logs them."""
        per = self.elapsed_ms(names, normalizer, reset)
        return {f"timers/{name.replace(' ', '_')}": ms for name, ms in per.items()}

    def log_string(
        self, names: Iterable[str] | None = None, normalizer: float = 1.0, reset: bool = True
    ) -> str:
        """One line ``time (ms) | forward: 12.34 | backward: 20.00`` for the console."""
        per = self.elapsed_ms(names, normalizer, reset)
        return "time (ms)" + "".join(f" | {n}: {ms:.2f}" for n, ms in per.items())
