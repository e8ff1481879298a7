"""Deterministic, resumable data-parallel batches over a map-style dataset.

GPT-NeoX order: global batch ``g`` is the ``micro_batch_size * dp_size`` consecutive sample
indices starting at ``g * micro_batch_size * dp_size``; data-parallel rank ``r`` takes the
contiguous slice ``[r * micro_batch_size, (r + 1) * micro_batch_size)`` of it. A trailing partial
global batch is dropped. Resuming at ``consumed_samples`` continues with the very batch an
uninterrupted run would have produced next.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from megatron.data.errors import DataError

Batch = dict[str, torch.Tensor]


def _collate(samples: list[dict[str, np.ndarray]]) -> Batch:
    """Stack per-sample arrays into int64 tensors of shape [micro_batch_size, ...]."""
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])).long()
            for key in samples[0]}


def _batches(dataset: Sequence[Any], micro: int, dp_rank: int, dp_size: int,
             start: int, cycle: bool) -> Iterator[Batch]:
    """Yield this rank's micro batches from global batch ``start`` on."""
    global_size = micro * dp_size
    num_batches = len(dataset) // global_size
    g = start % num_batches  # GPT-NeoX wraps the start the same way
    while True:
        first = g * global_size + dp_rank * micro
        yield _collate([dataset[i] for i in range(first, first + micro)])
        g += 1
        if g == num_batches:
            if not cycle:
                return
            g = 0


class _Prefetcher:
    """Runs a batch generator in a daemon thread, ``depth`` batches ahead of the consumer.

    Every prefetcher still running at interpreter exit is stopped and joined first
    (:func:`_close_running`): a daemon thread that is inside a torch op when the interpreter
    shuts down is killed from inside C++ as it takes the GIL back, which aborts the process
    ("terminate called without an active exception", exit 250) after a run that finished
    well. Training stops with the prefetcher one or two batches ahead, so that was common.
    """

    _DONE = object()
    join_timeout = 30.0
    """Seconds ``close`` waits for the thread to finish the batch it is preparing."""

    def __init__(self, source: Iterator[Batch], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, source: Iterator[Batch]) -> None:
        try:
            for batch in source:
                if not self._put(batch):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._put(exc)

    def __iter__(self) -> _Prefetcher:
        return self

    def __next__(self) -> Batch:
        item = self._queue.get()
        if item is self._DONE:
            self._queue.put(item)  # later calls keep raising StopIteration
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the background thread and wait for it (it also stops on its own at the end
        of the data)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.join_timeout)


_RUNNING: weakref.WeakSet[_Prefetcher] = weakref.WeakSet()
"""Prefetchers whose thread may still run; a finished one is collected with its thread."""


@atexit.register
def _close_running() -> None:
    for prefetcher in list(_RUNNING):
        prefetcher.close()


class TimedIterator:
    """Wraps an iterator and adds up the seconds spent in ``next``.

    The trainer hands this to the step (and the pipeline engine) so the time a step waits
    for its batch is measured where it happens, prefetch queue and host-to-device copy
    included, rather than estimated from the data pipeline's own timers.
    """

    def __init__(self, inner: Iterator[Any]) -> None:
        self.inner = inner
        self.waited = 0.0
        """Seconds spent in ``next`` so far."""

    def __iter__(self) -> TimedIterator:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self.inner)
        finally:
            self.waited += time.perf_counter() - start


def make_data_iterator(
    dataset: Sequence[Any],
    *,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    consumed_samples: int,
    cycle: bool = False,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """This rank's micro batches ``{"text": int64 [micro, seq+1], ...}`` in GPT-NeoX order.

    Args:
        dataset: map-style dataset whose items are dicts of equal-length int arrays.
        micro_batch_size: samples per rank per micro step.
        dp_rank, dp_size: data-parallel coordinates of this process.
        consumed_samples: samples all ranks consumed before (a multiple of the global batch).
        cycle: start over at the end instead of stopping.
        prefetch: batches to prepare ahead in a background thread (0: none).
    """
    if micro_batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
        raise DataError(
            f"bad data-parallel layout: micro_batch_size={micro_batch_size}, "
            f"dp_rank={dp_rank}, dp_size={dp_size}"
        )
    global_size = micro_batch_size * dp_size
    if consumed_samples < 0 or consumed_samples % global_size:
        raise DataError(
            f"consumed_samples={consumed_samples} is not a multiple of the global micro batch "
            f"{global_size} (micro_batch_size x dp_size); the checkpoint does not match this layout"
        )
    if len(dataset) < global_size:
        raise DataError(
            f"dataset has {len(dataset)} samples, fewer than one global batch "
            f"(micro_batch_size {micro_batch_size} x dp_size {dp_size}); build more samples"
        )
    source = _batches(dataset, micro_batch_size, dp_rank, dp_size,
                      consumed_samples // global_size, cycle)
    return _Prefetcher(source, prefetch) if prefetch > 0 else source
