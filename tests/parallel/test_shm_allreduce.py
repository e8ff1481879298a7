"""ShmAverager on real processes: the mean over the ranks, bit for bit, through /dev/shm.

Each rank makes every rank's inputs from fixed seeds, so the expected mean is computed
locally with plain torch arithmetic and compared with what came through shared memory.
Chunks are made tiny (1000 elements) so tensors straddle chunk edges and both windows are
reused several times.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]

SIZES = (1, 999, 2500, 7, 0, 4096)
"""Element counts: inside one chunk, across one edge, across several, empty, a multiple."""
CHUNK = 1000


def inputs(rank: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(n, generator=g).to(dtype) for n in SIZES]


def expected_mean(ranks: list[int], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Sum in rank order, then times 1 / size: the averager's (and DeepSpeed's) arithmetic."""
    per_rank = [inputs(r, dtype) for r in ranks]
    out = []
    for parts in zip(*per_rank, strict=True):
        total = parts[0].clone()
        for other in parts[1:]:
            total += other
        out.append(total * (1.0 / len(ranks)))
    return out


def average_world(rank: int, world_size: int, out: str) -> None:
    from megatron.parallel.shm_allreduce import ShmAverager

    averager = ShmAverager.create(None, list(range(world_size)), rank, chunk=CHUNK)
    assert averager is not None
    for _ in range(2):  # a second call reuses the windows
        tensors = inputs(rank)
        averager.average_(tensors)
    want = expected_mean(list(range(world_size)))
    for got, exp in zip(tensors, want, strict=True):
        assert torch.equal(got, exp), (got - exp).abs().max()
    if world_size == 2:  # and exactly gloo's all_reduce followed by the same scaling
        for got, mine in zip(tensors, inputs(rank), strict=True):
            dist.all_reduce(mine)
            assert torch.equal(got, mine * 0.5)
    torch.save(tensors, Path(out) / f"rank{rank}.pt")


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_gets_the_same_exact_mean(tmp_path: Path, world_size: int) -> None:
    run_distributed(average_world, world_size, 90.0, str(tmp_path))
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    for other in results[1:]:  # replicas hold identical bits, so they cannot drift apart
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def average_in_subgroup(rank: int, world_size: int) -> None:
    """World of 3; ranks 1 and 2 form the group (as a data-parallel group beside TP would)."""
    from megatron.parallel.shm_allreduce import ShmAverager

    group = dist.new_group([1, 2])
    if rank == 0:
        return
    averager = ShmAverager.create(group, [1, 2], rank - 1, chunk=CHUNK)
    assert averager is not None
    tensors = inputs(rank)
    averager.average_(tensors)
    for got, exp in zip(tensors, expected_mean([1, 2]), strict=True):
        assert torch.equal(got, exp)


def test_a_subgroup_averages_over_its_members_only() -> None:
    run_distributed(average_in_subgroup, 3, 90.0)


def bf16_and_bad_input(rank: int, world_size: int) -> None:
    from megatron.parallel.shm_allreduce import ShmAverager

    averager = ShmAverager.create(None, [0, 1], rank, dtype=torch.bfloat16, chunk=CHUNK)
    tensors = inputs(rank, torch.bfloat16)
    averager.average_(tensors)
    for got, exp in zip(tensors, expected_mean([0, 1], torch.bfloat16), strict=True):
        assert torch.equal(got, exp)
    for bad, word in ((torch.zeros(4, 4).t(), "contiguous=False"),
                      (torch.zeros(8, dtype=torch.float32), "torch.float32")):
        try:
            averager.average_([bad])
        except ValueError as err:
            assert word in str(err), err
        else:
            raise AssertionError(f"no error for {word}")


def test_other_dtypes_average_in_that_dtype_and_bad_tensors_are_refused() -> None:
    run_distributed(bf16_and_bad_input, 2, 90.0)


def create_where_not_shared(rank: int, world_size: int, shm_dir: str) -> None:
    """Three situations in which the ranks share no memory: every rank must get None."""
    from megatron.parallel import shm_allreduce

    # 1. The first rank has no /dev/shm.
    shm_allreduce.SHM_DIR = os.path.join(shm_dir, "missing")
    assert shm_allreduce.ShmAverager.create(None, [0, 1], rank) is None
    # 2. The first rank's /dev/shm has no room for the windows (posix_fallocate refuses).
    shm_allreduce.SHM_DIR = shm_dir
    fallocate = os.posix_fallocate

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    os.posix_fallocate = no_space
    assert shm_allreduce.ShmAverager.create(None, [0, 1], rank) is None
    os.posix_fallocate = fallocate
    assert os.listdir(shm_dir) == []
    dist.barrier()  # before rank 0 makes the next file
    # 3. Rank 1 cannot see the file rank 0 made (as on another machine).
    original_open = shm_allreduce._open
    if rank == 1:
        shm_allreduce._open = lambda path, numel, dtype: None
    assert shm_allreduce.ShmAverager.create(None, [0, 1], rank) is None
    dist.barrier()
    # 4. And when it works, the file is gone once every rank has mapped it.
    if rank == 1:
        shm_allreduce._open = original_open
    assert shm_allreduce.ShmAverager.create(None, [0, 1], rank, chunk=CHUNK) is not None
    dist.barrier()
    assert os.listdir(shm_dir) == []


def test_ranks_that_share_no_memory_all_fall_back_and_leave_no_file(tmp_path: Path) -> None:
    run_distributed(create_where_not_shared, 2, 90.0, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def share_between_averages(rank: int, world_size: int) -> None:
    """Each tensor ends up as its owner's, on every rank; averages before and after are
    untouched by it (the windows alternate across calls, so no chunk overwrites another
    that a rank may still be reading)."""
    from megatron.parallel.shm_allreduce import ShmAverager

    averager = ShmAverager.create(None, list(range(world_size)), rank, chunk=CHUNK)
    owners = [i % world_size for i in range(len(SIZES))][::-1]
    for _ in range(3):
        tensors = inputs(rank)
        averager.average_(tensors)
        shared = inputs(rank)  # each rank's own values; the owners' must win
        averager.share_(shared, owners)
        for i, got in enumerate(shared):
            assert torch.equal(got, inputs(owners[i])[i]), (rank, i)
        for got, exp in zip(tensors, expected_mean(list(range(world_size))), strict=True):
            assert torch.equal(got, exp)
    try:
        averager.share_(inputs(rank), owners[:-1])
    except ValueError as err:
        assert "6 tensors but 5 owners" in str(err), err
    else:
        raise AssertionError("no error for a missing owner")


@pytest.mark.parametrize("world_size", [2, 3])
def test_share_copies_each_tensor_from_its_owner_to_every_rank(world_size: int) -> None:
    run_distributed(share_between_averages, world_size, 90.0)
