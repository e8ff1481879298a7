"""make_data_iterator: GPT-NeoX data-parallel order, resumption, and input checks; TimedIterator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from megatron.data.errors import DataError
from megatron.data.iterator import TimedIterator, make_data_iterator


class Numbers:
    """Sample i is [i, i] so every batch shows which indices it holds."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"text": np.array([i, i])}


def _ids(iterator) -> list[list[int]]:
    return [batch["text"][:, 0].tolist() for batch in iterator]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_single_rank_is_sequential_and_drops_partial_batch(prefetch: int) -> None:
    it = make_data_iterator(Numbers(7), micro_batch_size=2, dp_rank=0, dp_size=1,
                            consumed_samples=0, prefetch=prefetch)
    assert _ids(it) == [[0, 1], [2, 3], [4, 5]]


def test_dp_ranks_take_contiguous_disjoint_slices() -> None:
    data = Numbers(26)
    ranks = [_ids(make_data_iterator(data, micro_batch_size=2, dp_rank=r, dp_size=3,
                                     consumed_samples=0)) for r in range(3)]
    # Global batch 0 is samples 0..5: rank 0 gets 0,1; rank 1 gets 2,3; rank 2 gets 4,5.
    assert ranks[0][:2] == [[0, 1], [6, 7]]
    assert ranks[1][:2] == [[2, 3], [8, 9]]
    assert ranks[2][:2] == [[4, 5], [10, 11]]
    interleaved = [i for step in zip(*ranks, strict=True) for b in step for i in b]
    single = [i for b in _ids(make_data_iterator(data, micro_batch_size=6, dp_rank=0,
                                                 dp_size=1, consumed_samples=0)) for i in b]
    assert interleaved == single == list(range(24))


def test_resume_continues_exactly() -> None:
    data = Numbers(40)
    full = _ids(make_data_iterator(data, micro_batch_size=2, dp_rank=1, dp_size=2,
                                   consumed_samples=0))
    resumed = _ids(make_data_iterator(data, micro_batch_size=2, dp_rank=1, dp_size=2,
                                      consumed_samples=12))
    assert resumed == full[3:]


def test_cycle_wraps_around() -> None:
    it = make_data_iterator(Numbers(4), micro_batch_size=2, dp_rank=0, dp_size=1,
                            consumed_samples=2, cycle=True, prefetch=0)
    assert [next(it)["text"][:, 0].tolist() for _ in range(3)] == [[2, 3], [0, 1], [2, 3]]


def test_errors_surface_from_prefetch_thread() -> None:
    class Broken(Numbers):
        def __getitem__(self, i: int) -> dict[str, np.ndarray]:
            raise RuntimeError("disk on fire")

    it = make_data_iterator(Broken(4), micro_batch_size=2, dp_rank=0, dp_size=1,
                            consumed_samples=0, prefetch=2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(it)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"consumed_samples": 3}, "not a multiple"),
    ({"dp_rank": 2}, "bad data-parallel layout"),
    ({"micro_batch_size": 8}, "fewer than one global batch"),
])
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"micro_batch_size": 2, "dp_rank": 0, "dp_size": 2, "consumed_samples": 0} | kwargs
    with pytest.raises(DataError, match=message):
        make_data_iterator(Numbers(10), **args)


def _slow(n: int, seconds: float):
    for i in range(n):
        time.sleep(seconds)
        yield i


def test_timed_iterator_adds_up_the_seconds_spent_in_next() -> None:
    timed = TimedIterator(_slow(3, 0.05))
    assert next(timed) == 0 and timed.waited >= 0.05
    assert list(timed) == [1, 2]
    assert 0.15 <= timed.waited < 1.0
    assert TimedIterator(iter([])).waited == 0.0
