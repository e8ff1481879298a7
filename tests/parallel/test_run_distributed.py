"""The run_distributed harness itself: arguments, failures, deaths and timeouts reach pytest."""

import os
import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed import DistributedTestError, run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]


def sum_ranks_and_check(rank: int, world_size: int, expected: float, path: str) -> None:
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # the whole world: proves the gloo group really spans the ranks
    if total.item() != expected:
        raise ValueError(f"sum {total.item()} != {expected}")
    with open(f"{path}.{rank}", "w") as f:
        f.write(str(world_size))


def rank1_fails_while_rank0_waits(rank: int, world_size: int) -> None:
    if rank == 1:
        raise KeyError("deliberate failure on rank 1")
    dist.barrier()  # never completes: rank 1 is gone, so rank 0 must be killed


def rank1_exits_hard(rank: int, world_size: int) -> None:
    if rank == 1:
        os._exit(7)
    dist.barrier()


def hangs_forever(rank: int, world_size: int) -> None:
    time.sleep(3600)


def test_runs_every_rank_with_arguments(tmp_path):
    path = str(tmp_path / "out")
    run_distributed(sum_ranks_and_check, 2, 60.0, 3.0, path)  # 1 + 2
    assert [open(f"{path}.{r}").read() for r in range(2)] == ["2", "2"]


def test_failure_is_reraised_with_traceback_and_others_killed():
    start = time.monotonic()
    with pytest.raises(DistributedTestError) as info:
        run_distributed(rank1_fails_while_rank0_waits, 2, 60.0)
    message = str(info.value)
    assert "rank 1 raised KeyError" in message
    assert "deliberate failure on rank 1" in message
    assert "in rank1_fails_while_rank0_waits" in message  # the traceback text came back
    assert time.monotonic() - start < 50  # did not wait for the timeout


def test_hard_exit_is_reported():
    with pytest.raises(DistributedTestError, match="rank 1 died with exit code 7"):
        run_distributed(rank1_exits_hard, 2, 60.0)


def test_timeout_kills_stragglers():
    start = time.monotonic()
    with pytest.raises(DistributedTestError, match=r"timed out after 6 s waiting for rank\(s\) "
                                                   r"\[0, 1\]"):
        run_distributed(hangs_forever, 2, 6.0)
    assert time.monotonic() - start < 30
