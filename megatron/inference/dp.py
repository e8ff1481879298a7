"""Sharing a list of requests among data-parallel replicas and gathering the answers.

Each replica (one tensor-parallel group) takes a contiguous block of the requests; all ranks
of a replica take the same block, so their tensor-parallel collectives stay in step. The
answers are gathered back in the original order on every rank.
"""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as dist

from megatron.parallel.groups import Group

T = TypeVar("T")


def block_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of replica ``rank``'s block; the first ``n % size`` get one more."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def my_block(items: list[T], dp: Group) -> list[T]:
    """This replica's contiguous block of ``items``."""
    start, stop = block_bounds(len(items), dp.rank, dp.size)
    return items[start:stop]


def gather_blocks(local: list[T], dp: Group) -> list[T]:
    """Concatenate every replica's answers in replica order (all ranks get the result)."""
    if dp.size == 1:
        return list(local)
    parts: list[list[T] | None] = [None] * dp.size
    dist.all_gather_object(parts, local, group=dp.group)
    return [x for part in parts for x in (part or [])]
