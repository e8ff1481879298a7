"""ParallelLayout arithmetic, checked by hand and against DeepSpeed's topology class."""

import pytest
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from megatron.parallel import LayoutError, ParallelLayout

# (tp, pp, dp)
SHAPES = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 3), (2, 2, 2), (2, 3, 2), (4, 1, 2), (3, 2, 1)]


@pytest.mark.parametrize(
    ("rank", "coords"),
    [(0, (0, 0, 0)), (1, (0, 0, 1)), (2, (0, 1, 0)), (3, (0, 1, 1)), (5, (1, 0, 1)),
     (6, (1, 1, 0)), (7, (1, 1, 1))],
)
def test_coords_tp2_pp2_dp2_by_hand(rank, coords):
    layout = ParallelLayout(tp=2, pp=2, dp=2, rank=rank)
    assert (layout.pp_rank, layout.dp_rank, layout.tp_rank) == coords
    assert layout.rank_of(*coords) == rank


def test_groups_tp2_pp2_dp2_by_hand():
    layout = ParallelLayout(tp=2, pp=2, dp=2, rank=5)
    assert layout.tp_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.dp_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.pp_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.model_groups() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert layout.tp_group_ranks == [4, 5]
    assert layout.dp_group_ranks == [5, 7]
    assert layout.pp_group_ranks == [1, 5]
    assert layout.model_group_ranks == [0, 1, 4, 5]
    assert layout.is_last_stage and not layout.is_first_stage


@pytest.mark.parametrize(("tp", "pp", "dp"), SHAPES)
def test_agrees_with_deepspeed_topology(tp, pp, dp):
    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    world = tp * pp * dp
    assert topo.world_size() == world
    for rank in range(world):
        layout = ParallelLayout(tp=tp, pp=pp, dp=dp, rank=rank)
        coord = topo.get_coord(rank)
        assert (layout.pp_rank, layout.dp_rank, layout.tp_rank) == (coord.pipe, coord.data,
                                                                     coord.model)
    layout = ParallelLayout(tp=tp, pp=pp, dp=dp, rank=0)
    assert layout.tp_groups() == topo.get_axis_comm_lists("model")
    assert layout.dp_groups() == topo.get_axis_comm_lists("data")
    assert layout.pp_groups() == topo.get_axis_comm_lists("pipe")
    assert layout.model_groups() == [sorted(topo.get_axis_list(axis="data", idx=d))
                                     for d in range(dp)]


@pytest.mark.parametrize(
    ("world", "tp", "pp", "expected"),
    [(8, 2, 2, (2, 2, 2)), (8, 2, 0, (2, 1, 4)), (8, 1, 1, (1, 1, 8)), (6, 3, 2, (3, 2, 1))],
)
def test_from_world(world, tp, pp, expected):
    layout = ParallelLayout.from_world(world, tp=tp, pp=pp, rank=world - 1)
    assert (layout.tp, layout.pp, layout.dp) == expected
    assert layout.world_size == world


def test_from_world_rejects_indivisible_world():
    with pytest.raises(LayoutError, match=r"world size 6 .* 4"):
        ParallelLayout.from_world(6, tp=2, pp=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"tp": 0, "pp": 1, "dp": 1}, "tp must be a positive int"),
     ({"tp": 1, "pp": 1, "dp": -2}, "dp must be a positive int"),
     ({"tp": 2, "pp": 1, "dp": 1, "rank": 2}, r"rank must be an int in \[0, 2\)")],
)
def test_invalid_layouts(kwargs, match):
    with pytest.raises(LayoutError, match=match):
        ParallelLayout(**kwargs)


def test_rank_of_checks_range():
    with pytest.raises(LayoutError, match="tp_rank 2 out of range"):
        ParallelLayout(tp=2, pp=1, dp=1).rank_of(0, 0, 2)
