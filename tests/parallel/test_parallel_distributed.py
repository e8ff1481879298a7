"""Tensor-parallel layers on 2 (or 4) real gloo processes, each compared with a dense reference.

Every rank builds the same full tensors from a fixed seed, copies its own block into the
parallel layer by explicit slicing (not through the code under test), and compares outputs
and gradients with plain ``torch.nn.functional`` on the full tensors.
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.parallel import (
    ColumnParallelLinear,
    ParallelLayout,
    ProcessGroups,
    RNGTracker,
    RowParallelLinear,
    VocabParallelEmbedding,
    all_reduce_sequence_parallel_grads,
    gather_from_sequence_parallel,
    gather_from_tp,
    gather_full,
    reduce_scatter_to_sequence_parallel,
    register_sequence_parallel_grad_hooks,
    scatter_to_sequence_parallel,
    scatter_to_tp,
    vocab_parallel_cross_entropy,
)
from tests.distributed import run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

ATOL = 1e-5
B, S, H, FF = 2, 4, 6, 8


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    diff = (actual - expected).abs().max().item()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert diff <= ATOL, f"{what}: max abs diff {diff}"


def _tp_groups(rank: int, world_size: int) -> ProcessGroups:
    return ProcessGroups.build(ParallelLayout.from_world(world_size, tp=world_size, pp=0,
                                                         rank=rank))


def _dense_mlp(seed: int):
    g = torch.Generator().manual_seed(seed)
    w1, b1 = torch.randn(FF, H, generator=g), torch.randn(FF, generator=g)
    w2, b2 = torch.randn(H, FF, generator=g), torch.randn(H, generator=g)
    x, upstream = torch.randn(B, S, H, generator=g), torch.randn(B, S, H, generator=g)
    return w1, b1, w2, b2, x, upstream


def _tp_mlp(groups: ProcessGroups, dense, sequence_parallel: bool):
    w1, b1, w2, b2 = dense[:4]
    r, k = groups.tp.rank, FF // groups.tp.size
    col = ColumnParallelLinear(H, FF, groups.tp, sequence_parallel=sequence_parallel)
    row = RowParallelLinear(FF, H, groups.tp, sequence_parallel=sequence_parallel)
    with torch.no_grad():
        col.weight.copy_(w1[r * k:(r + 1) * k])
        col.bias.copy_(b1[r * k:(r + 1) * k])
        row.weight.copy_(w2[:, r * k:(r + 1) * k])
        row.bias.copy_(b2)
    return col, row


def _reference_grads(dense):
    w1, b1, w2, b2, x, upstream = (t.clone().requires_grad_() for t in dense)
    out = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    (out * upstream).sum().backward()
    return out.detach(), {"x": x.grad, "w1": w1.grad, "b1": b1.grad, "w2": w2.grad,
                          "b2": b2.grad}


def _check_mlp(groups: ProcessGroups, sequence_parallel: bool) -> None:
    dense = _dense_mlp(seed=5)
    ref_out, ref = _reference_grads(dense)
    col, row = _tp_mlp(groups, dense, sequence_parallel)
    if sequence_parallel:  # only the row bias is replicated inside the sequence-parallel region
        assert register_sequence_parallel_grad_hooks(torch.nn.Sequential(col, row), groups.tp) == 1
    r, k, s = groups.tp.rank, FF // groups.tp.size, S // groups.tp.size
    rows = slice(r * s, (r + 1) * s)  # this rank's block of the sequence
    x = (dense[4][:, rows] if sequence_parallel else dense[4]).clone().requires_grad_()
    out = row(F.gelu(col(x)))
    upstream = dense[5][:, rows] if sequence_parallel else dense[5]
    (out * upstream).sum().backward()
    tag = "sp" if sequence_parallel else "tp"
    _close(out, ref_out[:, rows] if sequence_parallel else ref_out, f"{tag} output")
    _close(x.grad, ref["x"][:, rows] if sequence_parallel else ref["x"], f"{tag} input grad")
    _close(col.weight.grad, ref["w1"][r * k:(r + 1) * k], f"{tag} w1 grad")
    _close(col.bias.grad, ref["b1"][r * k:(r + 1) * k], f"{tag} b1 grad")
    _close(row.weight.grad, ref["w2"][:, r * k:(r + 1) * k], f"{tag} w2 grad")
    _close(row.bias.grad, ref["b2"], f"{tag} b2 grad")
    _close(gather_full(col.weight, 0, groups.tp), dense[0], f"{tag} gather_full w1")
    _close(gather_full(row.weight, 1, groups.tp), dense[2], f"{tag} gather_full w2")


def check_mlp_matches_dense(rank: int, world_size: int) -> None:
    groups = _tp_groups(rank, world_size)
    _check_mlp(groups, sequence_parallel=False)
    _check_mlp(groups, sequence_parallel=True)


def check_mappings_round_trip(rank: int, world_size: int) -> None:
    tp = _tp_groups(rank, world_size).tp
    g = torch.Generator().manual_seed(1)
    full, upstream = torch.randn(B, S, H, generator=g), torch.randn(B, S, H, generator=g)
    for scatter, gather, rows in (
        (scatter_to_tp, gather_from_tp, (slice(None), slice(None), slice(rank * 3, rank * 3 + 3))),
        (scatter_to_sequence_parallel,
         lambda t, grp: gather_from_sequence_parallel(t, grp, tensor_parallel_output_grad=False),
         (slice(None), slice(rank * 2, rank * 2 + 2))),
    ):
        x = full.clone().requires_grad_()
        part = scatter(x, tp)
        _close(part, full[rows], f"{scatter.__name__} block")
        back = gather(part, tp)
        _close(back, full, f"{gather.__name__} round trip")
        (back * upstream).sum().backward()
        _close(x.grad, upstream, f"{scatter.__name__} round-trip grad")
    # reduce-scatter of rank-dependent inputs: sum over ranks (by hand: full*(1+2)), own block
    x = (full * (rank + 1)).requires_grad_()
    part = reduce_scatter_to_sequence_parallel(x, tp)
    _close(part, 3 * full[:, rank * 2:rank * 2 + 2], "reduce_scatter value")
    (part * upstream[:, rank * 2:rank * 2 + 2]).sum().backward()
    _close(x.grad, upstream, "reduce_scatter grad (all-gather)")
    shared, sharded = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    shared.sequence_parallel, sharded.sequence_parallel = True, False
    shared.grad, sharded.grad = torch.full((2,), rank + 1.0), torch.full((2,), rank + 1.0)
    all_reduce_sequence_parallel_grads([shared, sharded], tp)
    assert shared.grad.tolist() == [3.0, 3.0] and sharded.grad.tolist() == [rank + 1.0] * 2


def check_embedding_and_cross_entropy(rank: int, world_size: int) -> None:
    tp = _tp_groups(rank, world_size).tp
    vocab, per = 16, 16 // world_size
    own = slice(rank * per, (rank + 1) * per)
    g = torch.Generator().manual_seed(2)
    table = torch.randn(vocab, H, generator=g)
    ids = torch.tensor([[0, 7, 8, 15], [3, 8, 8, 12]])  # ids on both ranks, some repeated
    upstream = torch.randn(B, S, H, generator=g)
    emb = VocabParallelEmbedding(vocab, H, tp)
    with torch.no_grad():
        emb.weight.copy_(table[own])
    ref_table = table.clone().requires_grad_()
    ref = F.embedding(ids, ref_table)
    (ref * upstream).sum().backward()
    out = emb(ids)
    (out * upstream).sum().backward()
    _close(out, ref.detach(), "embedding output")
    _close(emb.weight.grad, ref_table.grad[own], "embedding grad")
    sp = VocabParallelEmbedding(vocab, H, tp, sequence_parallel=True)
    with torch.no_grad():
        sp.weight.copy_(table[own])
    rows = slice(rank * S // world_size, (rank + 1) * S // world_size)
    sp_out = sp(ids)  # [b, s/tp, h]: reduce-scattered along the sequence
    (sp_out * upstream[:, rows]).sum().backward()
    _close(sp_out, ref.detach()[:, rows], "sequence-parallel embedding output")
    _close(sp.weight.grad, ref_table.grad[own], "sequence-parallel embedding grad")

    logits = torch.randn(B, S, vocab, generator=g) * 4
    weights = torch.rand(B, S, generator=g)
    ref_logits = logits.clone().requires_grad_()
    ref_loss = F.cross_entropy(ref_logits.view(-1, vocab), ids.view(-1), reduction="none")
    (ref_loss.view(B, S) * weights).sum().backward()
    local = logits[..., own].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, ids, tp)
    (loss * weights).sum().backward()
    _close(loss, ref_loss.detach().view(B, S), "cross entropy value")
    _close(local.grad, ref_logits.grad[..., own], "cross entropy grad")


def check_rng_tracker(rank: int, world_size: int) -> None:
    tp = _tp_groups(rank, world_size).tp
    tracker = RNGTracker.from_seed(1234, tp_rank=tp.rank)
    ones = torch.ones(256)
    replicated = F.dropout(ones, p=0.5)
    with tracker.fork():
        sharded = F.dropout(ones, p=0.5)
    replicated_after = F.dropout(ones, p=0.5)
    masks = torch.stack([replicated, sharded, replicated_after])
    gathered = [torch.empty_like(masks) for _ in range(world_size)]
    dist.all_gather(gathered, masks, group=tp.group)
    assert torch.equal(gathered[0][0], gathered[1][0]), "replicated dropout differs across ranks"
    assert torch.equal(gathered[0][2], gathered[1][2]), "default stream drifted after fork()"
    assert not torch.equal(gathered[0][1], gathered[1][1]), "forked dropout equal across ranks"


def check_groups_match_deepspeed_grid(rank: int, world_size: int) -> None:
    import deepspeed
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid

    layout = ParallelLayout.from_world(world_size, tp=2, pp=1, rank=rank)
    groups = ProcessGroups.build(layout)
    tp_ranks, dp_ranks = [[0, 1], [2, 3]][rank // 2], [[0, 2], [1, 3]][rank % 2]  # by hand
    assert list(groups.tp.ranks) == tp_ranks and groups.tp.rank == rank % 2
    assert list(groups.dp.ranks) == dp_ranks and groups.dp.rank == rank // 2
    assert groups.pp.size == 1 and groups.pp.group is None
    for grp, members in ((groups.tp, tp_ranks), (groups.dp, dp_ranks)):
        total = torch.tensor([float(rank)])
        dist.all_reduce(total, group=grp.group)
        assert total.item() == sum(members), (grp, total)
    mpu = groups.mpu
    assert mpu.get_model_parallel_world_size() == 2 and mpu.get_model_parallel_rank() == rank % 2
    assert mpu.get_data_parallel_group_ranks() == dp_ranks
    deepspeed.init_distributed(dist_backend="gloo")
    grid = PipelineParallelGrid(topology=groups.topology)
    assert grid.dp_group == dp_ranks and grid.slice_group == tp_ranks
    assert grid.get_data_parallel_rank() == groups.dp.rank
    assert grid.get_slice_parallel_rank() == groups.tp.rank
    assert grid.get_model_parallel_world_size() == mpu.get_model_parallel_world_size()


class _MLP(torch.nn.Module):
    def __init__(self, col: ColumnParallelLinear, row: RowParallelLinear) -> None:
        super().__init__()
        self.col, self.row = col, row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row(F.gelu(self.col(x)))


def check_deepspeed_engine_with_mpu(rank: int, world_size: int) -> None:
    """Plain DeepSpeed engine + our mpu: its clipped update equals the dense clipped update.

    DeepSpeed must (1) not overwrite rank 1's shards with rank 0's when it broadcasts the
    model over the data-parallel group, and (2) compute the global gradient norm across the
    tp ranks, counting sharded parameters on every rank and the replicated bias once.
    """
    import deepspeed

    groups = _tp_groups(rank, world_size)
    dense = _dense_mlp(seed=9)
    _, ref = _reference_grads(dense)
    norm = torch.sqrt(sum(ref[k].pow(2).sum() for k in ("w1", "b1", "w2", "b2")))
    max_norm = 0.5 * float(norm) / B  # clipping halves the step, so the norm matters
    model = _MLP(*_tp_mlp(groups, dense, sequence_parallel=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = {"train_batch_size": B, "train_micro_batch_size_per_gpu": B,
              "gradient_clipping": max_norm}
    deepspeed.init_distributed(dist_backend="gloo")
    engine, *_ = deepspeed.initialize(model=model, mpu=groups.mpu, config=config,
                                      optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    for name, p in engine.module.named_parameters():
        _close(p.detach(), before[name], f"{name} after deepspeed.initialize")
    out = engine(dense[4])
    engine.backward((out * dense[5]).sum() / B)
    engine.step()
    # grads are ref / B with norm / B; clipped to max_norm the update is ref * max_norm / norm
    keys = {n: n for n in before}
    _check_clipped_step(engine.module, before, ref, max_norm / float(norm), groups.tp.rank, keys)


def _check_clipped_step(module: torch.nn.Module, before: dict, ref: dict, scale: float,
                        tp_rank: int, keys: dict[str, str]) -> None:
    """Each parameter moved by ``-scale * (its block of the dense gradient)``."""
    k = FF // 2
    own = {"col.weight": ref["w1"][tp_rank * k:(tp_rank + 1) * k],
           "col.bias": ref["b1"][tp_rank * k:(tp_rank + 1) * k],
           "row.weight": ref["w2"][:, tp_rank * k:(tp_rank + 1) * k], "row.bias": ref["b2"]}
    seen = set()
    for name, p in module.named_parameters():
        key = keys[name]
        seen.add(key)
        _close(p.detach(), before[name] - own[key] * scale, f"{name} after clipped SGD step")
    assert seen == set(own), seen


def check_pipeline_module_with_topology(rank: int, world_size: int) -> None:
    """PipelineModule(topology=groups.topology), no mpu: its grid clips like the dense model."""
    import deepspeed
    from deepspeed.pipe import PipelineModule

    groups = _tp_groups(rank, world_size)
    dense = _dense_mlp(seed=9)
    _, ref = _reference_grads(dense)
    norm = float(torch.sqrt(sum(ref[k].pow(2).sum() for k in ("w1", "b1", "w2", "b2"))))
    col, row = _tp_mlp(groups, dense, sequence_parallel=False)
    deepspeed.init_distributed(dist_backend="gloo")
    module = PipelineModule(layers=[col, torch.nn.GELU(), row], topology=groups.topology,
                            loss_fn=lambda out, up: (out * up).sum() / B,
                            partition_method="uniform")
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    config = {"train_batch_size": B, "train_micro_batch_size_per_gpu": B,
              "gradient_clipping": 0.5 * norm / B}
    engine, *_ = deepspeed.initialize(model=module, config=config,
                                      optimizer=torch.optim.SGD(module.parameters(), lr=1.0))
    assert engine.grid.get_slice_parallel_rank() == groups.tp.rank
    engine.train_batch(iter([(dense[4], dense[5])]))
    # PipelineModule names its layers by index: 0 is col, 2 is row (1, GELU, has no params)
    keys = {f"{i}.{p}": f"{layer}.{p}" for i, layer in ((0, "col"), (2, "row"))
            for p in ("weight", "bias")}
    # the norm of the grads (ref / B) is norm / B, clipped to half of it: the step is ref / 2B
    _check_clipped_step(engine.module, before, ref, 0.5 / B, groups.tp.rank, keys)


def test_mlp_matches_dense():
    run_distributed(check_mlp_matches_dense, 2)


def check_mappings_and_rng(rank: int, world_size: int) -> None:
    from megatron.parallel import collective_device

    check_mappings_round_trip(rank, world_size)
    check_rng_tracker(rank, world_size)
    assert collective_device() == "cpu"  # gloo takes CPU tensors (NCCL would need CUDA ones)


def test_mappings_round_trip_and_rng_tracker_across_ranks():
    run_distributed(check_mappings_and_rng, 2)  # one spawn for two cheap checks


def test_embedding_and_cross_entropy_match_dense():
    run_distributed(check_embedding_and_cross_entropy, 2)


def test_groups_match_deepspeed_grid_on_4_ranks():
    run_distributed(check_groups_match_deepspeed_grid, 4)


def test_deepspeed_engine_with_mpu_clips_like_dense():
    run_distributed(check_deepspeed_engine_with_mpu, 2)


def test_pipeline_module_with_topology_clips_like_dense():
    run_distributed(check_pipeline_module_with_topology, 2)
