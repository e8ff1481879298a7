"""Tensor-parallel pieces in one process: tp=1 equals plain torch, sharding arithmetic, RNG."""

import pytest
import torch
import torch.nn.functional as F

from megatron.parallel import (
    ColumnParallelLinear,
    Group,
    LayoutError,
    ProcessGroups,
    RNGTracker,
    RowParallelLinear,
    VocabParallelEmbedding,
    copy_to_tp,
    gather_from_sequence_parallel,
    reduce_from_tp,
    scatter_to_tp,
    shard,
    vocab_parallel_cross_entropy,
)

ONE = Group()


def test_single_groups_and_mpu():
    groups = ProcessGroups.single()
    assert (groups.tp.size, groups.dp.size, groups.pp.size) == (1, 1, 1)
    assert groups.tp.group is None
    mpu = groups.mpu
    assert mpu.get_data_parallel_world_size() == 1
    assert mpu.get_tensor_model_parallel_rank() == 0
    assert mpu.get_pipe_parallel_world_size() == 1
    assert not hasattr(mpu, "get_sequence_parallel_world_size")  # would mean Ulysses to DS
    assert groups.topology.get_dim("model") == 1


def test_build_without_distributed_is_an_error():
    from megatron.parallel import ParallelLayout

    with pytest.raises(LayoutError, match="torch.distributed to be initialised"):
        ProcessGroups.build(ParallelLayout(tp=1, pp=1, dp=1))


def test_tp1_mappings_are_identity_without_communication():
    x = torch.randn(2, 3, 4)
    for fn in (copy_to_tp, reduce_from_tp, scatter_to_tp, gather_from_sequence_parallel):
        assert fn(x, ONE) is x


def test_tp1_layers_equal_plain_torch():
    torch.manual_seed(0)
    col = ColumnParallelLinear(4, 6, ONE)
    row = RowParallelLinear(6, 4, ONE, input_is_parallel=False)
    with torch.no_grad():
        col.bias.normal_()
        row.bias.normal_()
    x = torch.randn(2, 3, 4)
    expected = F.linear(F.linear(x, col.weight, col.bias), row.weight, row.bias)
    torch.testing.assert_close(row(col(x)), expected, rtol=0, atol=0)
    out, bias = RowParallelLinear(6, 4, ONE, skip_bias_add=True)(torch.randn(2, 6))
    assert bias is not None and out.shape == (2, 4)


def test_sharding_attributes():
    col, row = ColumnParallelLinear(4, 6, ONE), RowParallelLinear(6, 4, ONE)
    emb = VocabParallelEmbedding(10, 4, ONE)
    assert (col.weight.tp_dim, col.bias.tp_dim, row.weight.tp_dim, row.bias.tp_dim) == (0, 0, 1,
                                                                                         None)
    assert emb.weight.tp_dim == 0
    assert col.weight.model_parallel and not row.bias.model_parallel
    assert not row.bias.sequence_parallel
    assert RowParallelLinear(6, 4, ONE, sequence_parallel=True).bias.sequence_parallel


def test_default_init_is_layout_independent():
    """A rank of a TP=2 layer holds exactly its block of what a TP=1 layer holds."""
    torch.manual_seed(3)
    full = torch.empty(6, 4).normal_(0.0, 0.02)  # default_init: N(0, 0.02) on the full tensor
    for rank in (0, 1):
        torch.manual_seed(3)
        col = ColumnParallelLinear(4, 6, Group(size=2, rank=rank, ranks=(0, 1)))
        torch.testing.assert_close(col.weight.data, full[3 * rank:3 * rank + 3], rtol=0, atol=0)
        torch.manual_seed(3)
        row = RowParallelLinear(4, 6, Group(size=2, rank=rank, ranks=(0, 1)))
        torch.testing.assert_close(row.weight.data, full[:, 2 * rank:2 * rank + 2], rtol=0,
                                   atol=0)


def test_shard_blocks_and_errors():
    full = torch.arange(12).reshape(3, 4)
    second = Group(size=2, rank=1, ranks=(0, 1))
    assert shard(full, 1, second).tolist() == [[2, 3], [6, 7], [10, 11]]
    assert shard(full, None, second) is full
    with pytest.raises(LayoutError, match="not divisible by the tensor-parallel size 2"):
        shard(full, 0, second)
    with pytest.raises(LayoutError, match="num_embeddings .* = 7 is not divisible"):
        VocabParallelEmbedding(7, 4, second)
    with pytest.raises(LayoutError, match="input_is_parallel=True"):
        RowParallelLinear(4, 4, ONE, input_is_parallel=False, sequence_parallel=True)


def test_tp1_embedding_matches_lookup():
    emb = VocabParallelEmbedding(10, 3, ONE)
    ids = torch.tensor([[0, 9, 4], [4, 4, 1]])
    torch.testing.assert_close(emb(ids), emb.weight[ids], rtol=0, atol=0)


def test_tp1_cross_entropy_matches_torch():
    torch.manual_seed(0)
    logits = (torch.randn(2, 5, 11) * 3).requires_grad_()
    labels = torch.randint(0, 11, (2, 5))
    weights = torch.rand(2, 5)
    loss = vocab_parallel_cross_entropy(logits, labels, ONE)
    ref_logits = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(ref_logits.view(-1, 11), labels.view(-1), reduction="none").view(2, 5)
    torch.testing.assert_close(loss.double(), ref, rtol=0, atol=1e-5)
    (loss * weights).sum().backward()
    (ref * weights.double()).sum().backward()
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=0, atol=1e-6)


def test_cross_entropy_is_stable_and_fp32_for_bf16_logits():
    # exp(256) overflows fp32, so this only works with the max subtracted; all exact in bf16
    logits = torch.tensor([[[256.0, 255.0, 0.0]]], dtype=torch.bfloat16, requires_grad=True)
    loss = vocab_parallel_cross_entropy(logits, torch.tensor([[1]]), ONE)
    assert loss.dtype == torch.float32
    # log(e^0 + e^-1 + e^-256) - (-1) = log(1 + 1/e) + 1, by hand
    expected = torch.log1p(torch.exp(torch.tensor(-1.0))) + 1.0
    torch.testing.assert_close(loss, expected.view(1, 1), rtol=0, atol=1e-5)
    loss.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_fork_uses_megatron_seed_and_leaves_default_stream_alone():
    tracker = RNGTracker.from_seed(1234, tp_rank=1)
    with tracker.fork():
        forked = torch.rand(4)
    after = torch.rand(5)
    expected_fork = torch.rand(4, generator=torch.Generator().manual_seed(1234 + 2718 + 1))
    torch.manual_seed(1234)
    torch.testing.assert_close(forked, expected_fork, rtol=0, atol=0)
    torch.testing.assert_close(after, torch.rand(5), rtol=0, atol=0)


def test_get_set_states_resume_exactly():
    tracker = RNGTracker.from_seed(7, tp_rank=0)
    states = tracker.get_states()
    with tracker.fork():
        a = torch.rand(3)
    b = torch.rand(3)
    tracker.set_states(states)
    with tracker.fork():
        torch.testing.assert_close(torch.rand(3), a, rtol=0, atol=0)
    torch.testing.assert_close(torch.rand(3), b, rtol=0, atol=0)


def test_tracker_errors():
    tracker = RNGTracker()
    with pytest.raises(LayoutError, match="unknown RNG stream 'model-parallel-rng'"):
        with tracker.fork():
            pass
    tracker.add("x", 1)
    with pytest.raises(LayoutError, match="'x' already exists"):
        tracker.add("x", 2)
    with pytest.raises(LayoutError, match="device_type must be one of"):
        RNGTracker("tpu")


def _dropout_block(x: torch.Tensor, weight: torch.Tensor, tracker: RNGTracker) -> torch.Tensor:
    h = F.linear(x, weight)
    with tracker.fork():
        h = F.dropout(h, p=0.5, training=True)
    return F.dropout(h.tanh(), p=0.3, training=True)


def test_checkpoint_replays_forked_dropout():
    torch.manual_seed(0)
    x, weight = torch.randn(4, 8), torch.randn(8, 8, requires_grad=True)
    grads = []
    for use_checkpoint in (False, True):
        tracker = RNGTracker.from_seed(11, tp_rank=0)
        weight.grad = None
        if use_checkpoint:
            out = tracker.checkpoint(_dropout_block, x, weight, tracker)
        else:
            out = _dropout_block(x, weight, tracker)
        out.sum().backward()
        grads.append((out.detach(), weight.grad.clone(), tracker.get_states()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=0)
    for name, state in grads[0][2].items():  # streams end where an uncheckpointed run ends
        assert torch.equal(grads[1][2][name], state), name


def test_collectives_use_the_cpu_without_a_process_group():
    from megatron.parallel import collective_device

    assert collective_device() == "cpu"
