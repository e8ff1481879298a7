"""The optimizer step sharded over two CPU data-parallel ranks trains as the replicated one.

Unit part (one process): owners are balanced, and the state of two optimizers that each
stepped half of the parameters converts to exactly the state one optimizer over all of them
reaches (and back).

Distributed part (two real processes, ``engine.build_run``): sharded against
``MEGATRON_DP_OPTIMIZER=replicated`` on the same tiny model and data, in fp32 and bf16. fp32
must give identical losses, gradient norms, weights and checkpointed optimizer state; bf16,
whose clipping norm is summed in another order, the same within a stated tolerance. A
DeepSpeed checkpoint written by the sharded run resumes exactly, sharded or replicated.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from megatron.parallel.groups import Group
from megatron.training.sharded_optimizer import (
    ShardedOptimizer,
    ShardPlan,
    assign_owners,
    why_not_sharded,
)
from tests.distributed import run_distributed
from tests.e2e import sweep_models as sweep
from tests.e2e.sweep_data import rank_batches


def test_owners_balance_the_elements_and_do_not_depend_on_the_rank() -> None:
    sizes = [50304 * 512, 512, 1536 * 512, 50304 * 512, 512, 2048 * 512, 512 * 2048, 7]
    owners = assign_owners(sizes, 2)
    load = [sum(s for s, o in zip(sizes, owners, strict=True) if o == r) for r in range(2)]
    assert owners[0] != owners[3]  # the two big matrices go to different ranks
    assert abs(load[0] - load[1]) <= max(sizes[1:3] + sizes[4:])  # within one small tensor
    assert assign_owners(sizes, 2) == owners
    assert sorted(set(assign_owners([5, 4, 3, 2, 1], 3))) == [0, 1, 2]


def test_sharding_applies_to_cpu_data_parallel_fp32_engines_only(monkeypatch) -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    base = dict(dp_size=2, device_type="cpu", zero_stage=0, is_pipe=False, optimizer=opt,
                fp32_engine=True)
    assert why_not_sharded(**base) is None
    for change, reason in ((dict(dp_size=1), "one data-parallel"),
                           (dict(device_type="cuda"), "CPU"), (dict(zero_stage=1), "ZeRO"),
                           (dict(is_pipe=True), "pipeline"),
                           (dict(optimizer=None), "DeepSpeed builds"),
                           (dict(fp32_engine=False), "wrapper")):
        assert reason in why_not_sharded(**{**base, **change})
    monkeypatch.setenv("MEGATRON_DP_OPTIMIZER", "replicated")
    assert "replicated" in why_not_sharded(**base)
    monkeypatch.setenv("MEGATRON_DP_OPTIMIZER", "zero")
    with pytest.raises(ValueError, match="'sharded' or 'replicated'"):
        why_not_sharded(**base)


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g))
            for s in ((40, 8), (8,), (8, 8), (3,), (40, 8), (5,))]


def _groups(params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """Two groups, as param_groups makes (with and without weight decay)."""
    return [{"params": params[:4], "weight_decay": 0.1},
            {"params": params[4:], "weight_decay": 0.0}]


def _step_all(params: list[torch.nn.Parameter], optimizers: list[torch.optim.Optimizer],
              steps: int) -> None:
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.clone()
        for opt in optimizers:
            opt.step()


def _shard(params: list[torch.nn.Parameter], rank: int) -> ShardedOptimizer:
    groups = _groups(params)
    plan = ShardPlan(assign_owners([p.numel() for p in params], 2),
                     Group(size=2, rank=rank, ranks=(0, 1)), sharer=None)  # type: ignore[arg-type]
    local = torch.optim.AdamW(plan.owned(groups), lr=0.1)
    return ShardedOptimizer(local, groups, plan)


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys()
        for key, value in state.items():
            assert torch.equal(value, b["state"][index][key]), (index, key)


def test_two_halves_of_the_state_make_exactly_the_whole_one_and_split_back() -> None:
    whole_params, half_params = _params(1), _params(1)
    whole = torch.optim.AdamW(_groups(whole_params), lr=0.1)
    shards = [_shard(half_params, rank) for rank in range(2)]
    assert sorted(len(s.local.param_groups[0]["params"]) + len(s.local.param_groups[1]["params"])
                  for s in shards) != [0, 6]  # both ranks own something
    _step_all(whole_params, [whole], 3)
    _step_all(half_params, [s.local for s in shards], 3)
    for a, b in zip(whole_params, half_params, strict=True):
        assert torch.equal(a, b)  # each update is the same arithmetic per element
    expected = whole.state_dict()
    merged = shards[0]._whole([s.local.state_dict() for s in shards])
    _assert_same_state(merged, expected)
    for rank, shard in enumerate(shards):
        _assert_same_state(shard._part(expected), shard.local.state_dict())
        # and the part loads: the next step goes on exactly as the whole optimizer's
        fresh = _shard(_params(1), rank)
        fresh.local.load_state_dict(fresh._part(expected))
        _assert_same_state(fresh.local.state_dict(), shard.local.state_dict())


def test_a_state_of_another_model_is_refused_with_the_group_sizes() -> None:
    shard = _shard(_params(1), 0)
    other = torch.optim.AdamW([{"params": _params(2)[:3]}], lr=0.1).state_dict()
    with pytest.raises(ValueError, match=r"param groups of \[3\].*hold \[4, 2\]"):
        shard.load_state_dict(other)


# --- two real processes through engine.build_run -------------------------------------------

CONFIG: dict[str, Any] = dict(
    sweep.BASE, pos_emb="rotary", no_weight_tying=True, model_parallel_size=1,
    train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2,
)
STEPS, SAVE_AT = 4, 2
BF16_LOSS_RTOL = 1e-3
"""bf16: the clipping norm is summed over the owners' halves, so a clip factor can differ in
its last bit and a bf16 weight by one rounding step; that moves these losses by < 1e-4."""


def _run(precision: str, mode: str) -> Any:
    from megatron.neox_arguments import NeoXArgs, Resources
    from megatron.training.engine import build_run

    os.environ["MEGATRON_DP_OPTIMIZER"] = mode
    args = NeoXArgs.from_dict(dict(CONFIG, precision=precision),
                              resources=Resources(num_nodes=1, gpus_per_node=2))
    return build_run(args)


def _train(run: Any, first: int, last: int) -> tuple[list[float], list[float]]:
    from megatron.training.step import train_step

    data = rank_batches(run.groups.dp.rank, run.groups.dp.size,
                        run.args.train_micro_batch_size_per_gpu, sweep.SEQ, sweep.VOCAB)
    data = itertools.islice(data, first * run.args.gradient_accumulation_steps, None)
    results = [train_step(run, data) for _ in range(first, last)]
    return [r.loss for r in results], [r.grad_norm for r in results]


def _stepped_params(run: Any) -> int:
    """How many parameters this rank's optimizer steps (its groups are the local ones)."""
    return sum(len(g["params"]) for g in run.engine.optimizer.param_groups)


def compare(rank: int, world_size: int, out: str) -> None:
    os.environ["LOCAL_SIZE"] = str(world_size)  # as DeepSpeed's launcher sets it
    report: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        ckpt = str(Path(out) / f"ckpt-{precision}")
        for mode in ("sharded", "replicated"):
            run = _run(precision, mode)
            first = _train(run, 0, SAVE_AT)
            if mode == "sharded":
                run.engine.save_checkpoint(ckpt, tag="t")
            second = _train(run, SAVE_AT, STEPS)
            report[f"{precision}-{mode}"] = {
                "sharded": isinstance(run.engine.optimizer, ShardedOptimizer),
                "owned": _stepped_params(run),
                "losses": first[0] + second[0], "norms": first[1] + second[1]}
            state = run.engine.optimizer.state_dict()  # collective when sharded
            if rank == 0:
                torch.save(state, Path(out) / f"{precision}-{mode}-opt.pt")
            torch.save(run.engine.module.state_dict(), Path(out) / f"{precision}-{mode}{rank}.pt")
            run.engine.destroy()
        for mode in ("sharded", "replicated"):  # the sharded run's checkpoint, resumed
            run = _run(precision, mode)
            run.engine.load_checkpoint(ckpt, tag="t")
            report[f"{precision}-resumed-{mode}"] = _train(run, SAVE_AT, STEPS)[0]
            run.engine.destroy()
    os.environ["MEGATRON_DP_OPTIMIZER"] = "sharded"
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("sharded")
    run_distributed(compare, 2, 400.0, str(out))
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.distributed
@pytest.mark.timeout(500)
def test_each_rank_steps_only_its_own_parameters(reports) -> None:
    _, found = reports
    for precision in ("fp32", "bf16"):
        whole = found[0][f"{precision}-replicated"]["owned"]
        owned = [r[f"{precision}-sharded"]["owned"] for r in found]
        assert all(r[f"{precision}-sharded"]["sharded"] for r in found)
        assert not any(r[f"{precision}-replicated"]["sharded"] for r in found)
        assert sum(owned) == whole and min(owned) > 0


@pytest.mark.distributed
@pytest.mark.timeout(500)
def test_fp32_trains_bit_for_bit_as_the_replicated_step(reports) -> None:
    out, found = reports
    for r in found:
        assert r["fp32-sharded"]["losses"] == r["fp32-replicated"]["losses"]
        assert r["fp32-sharded"]["norms"] == r["fp32-replicated"]["norms"]
        assert r["fp32-sharded"]["losses"][-1] < r["fp32-sharded"]["losses"][0]
    reference = torch.load(out / "fp32-replicated0.pt")
    for name in ("fp32-sharded0.pt", "fp32-sharded1.pt", "fp32-replicated1.pt"):
        weights = torch.load(out / name)
        for key, value in reference.items():
            assert torch.equal(weights[key], value), (name, key)
    _assert_same_state(torch.load(out / "fp32-sharded-opt.pt"),
                       torch.load(out / "fp32-replicated-opt.pt"))


@pytest.mark.distributed
@pytest.mark.timeout(500)
def test_bf16_tracks_the_replicated_step_and_saves_the_same_layout(reports) -> None:
    out, found = reports
    for r in found:
        sharded, replicated = r["bf16-sharded"]["losses"], r["bf16-replicated"]["losses"]
        assert sharded == pytest.approx(replicated, rel=BF16_LOSS_RTOL)
        assert sharded[-1] < sharded[0]
    a, b = torch.load(out / "bf16-sharded-opt.pt"), torch.load(out / "bf16-replicated-opt.pt")
    assert a.keys() == b.keys()
    assert [[m.shape for m in ms] for ms in a["fp32_groups"]] == \
        [[m.shape for m in ms] for ms in b["fp32_groups"]]
    inner_a, inner_b = a["optimizer_state_dict"], b["optimizer_state_dict"]
    assert inner_a["param_groups"] == inner_b["param_groups"]
    for index, state in inner_b["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(inner_a["state"][index][key], value, rtol=0.05, atol=1e-3)


@pytest.mark.distributed
@pytest.mark.timeout(500)
def test_a_sharded_checkpoint_resumes_exactly_sharded_or_replicated(reports) -> None:
    _, found = reports
    for r in found:
        tail = r["fp32-sharded"]["losses"][SAVE_AT:]
        assert r["fp32-resumed-sharded"] == tail
        assert r["fp32-resumed-replicated"] == tail
        assert r["bf16-resumed-sharded"] == r["bf16-sharded"]["losses"][SAVE_AT:]
        assert r["bf16-resumed-replicated"] == pytest.approx(
            r["bf16-sharded"]["losses"][SAVE_AT:], rel=BF16_LOSS_RTOL)
