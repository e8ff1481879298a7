"""gather_state on real processes: the first rank gets every rank's nested state, exactly.

Each rank builds its state from fixed seeds, so the first rank can build every rank's
expected state itself and compare it with what arrived.
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]


def state_of(rank: int) -> dict:
    """A torch-optimizer-like state: int keys, 0-d tensors, several dtypes, plain values."""
    g = torch.Generator().manual_seed(rank)
    return {
        "state": {i: {"step": torch.tensor(float(rank + i)),
                      "exp_avg": torch.randn(3 + rank, 4, generator=g),
                      "ids": torch.arange(rank + 2)}
                  for i in range(rank + 1)},  # each rank holds a different number
        "fp32_groups": [[torch.randn(5, generator=g).to(torch.bfloat16)], []],
        "param_groups": [{"lr": 0.1 * (rank + 1), "params": list(range(rank + 1))}],
        "cur_scale": 1.0,
        "pair": (torch.ones(2, dtype=torch.float64) * rank, "text"),
    }


def assert_same(got: object, want: object) -> None:
    assert type(got) is type(want), (type(got), type(want))
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, list | tuple):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same(a, b)
    else:
        assert got == want


def gather_everywhere(rank: int, world_size: int) -> None:
    import torch.distributed as dist

    from megatron.parallel.gather_state import gather_state
    from megatron.parallel.groups import Group

    group = Group(size=world_size, rank=rank, ranks=tuple(range(world_size)),
                  group=dist.group.WORLD)
    mine = state_of(rank)
    found = gather_state(mine, group)
    if rank != 0:
        assert found is None
        return
    assert found is not None and len(found) == world_size
    assert found[0] is mine
    for r, state in enumerate(found):
        assert_same(state, state_of(r))


@pytest.mark.parametrize("world_size", [2, 3])
def test_the_first_rank_gets_every_ranks_state_exactly(world_size: int) -> None:
    run_distributed(gather_everywhere, world_size, 90.0)
