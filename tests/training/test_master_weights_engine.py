"""bf16 at ZeRO stage 0 through ``engine.build_run``: our MasterWeights against DeepSpeed's
FP16_UnfusedOptimizer, on two real processes (DP=2 with shared-memory averaging, and TP=2).

The two start differently (DeepSpeed's wrapper takes a zero-gradient step when it is built,
so its Adam step count runs one ahead), so the comparison starts from one checkpoint: ours
trains 3 steps and saves; DeepSpeed's wrapper loads that checkpoint and both take the same
4th step. With data parallelism their fp32 masters must then agree to fp32 rounding; under TP=2
DeepSpeed's wrapper clips by a smaller norm (see the test), so there ours is checked
against the whole model's gradient norm instead. Each must read the other's checkpoint.
The optimizer step is kept replicated over the DP ranks (``MEGATRON_DP_OPTIMIZER``) so each
rank holds every master; ``test_sharded_optimizer`` shows the sharded step trains as this one
and reads and writes the same checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed import run_distributed
from tests.e2e import sweep_models as sweep
from tests.e2e.sweep_data import rank_batches

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]

CONFIG: dict[str, Any] = dict(
    sweep.BASE, pos_emb="rotary", no_weight_tying=True, precision="bf16",
    gradient_clipping=0.5, weight_decay=0.1, train_micro_batch_size_per_gpu=4,
)
LAYOUTS = {"dp2": 1, "tp2": 2}  # model_parallel_size


def build(mode: str, tp: int, gpus: int = 2, **overrides: Any) -> Any:
    from megatron.neox_arguments import NeoXArgs, Resources
    from megatron.training.engine import build_run

    os.environ["MEGATRON_BF16_OPTIMIZER"] = mode
    args = NeoXArgs.from_dict(dict(CONFIG, model_parallel_size=tp, **overrides),
                              resources=Resources(num_nodes=1, gpus_per_node=gpus))
    return build_run(args)


def batches_from(run: Any, first: int) -> Any:
    """This rank's micro-batches from global batch ``first`` on."""
    data = rank_batches(run.groups.dp.rank, run.groups.dp.size,
                        run.args.train_micro_batch_size_per_gpu, sweep.SEQ, sweep.VOCAB)
    for _ in range(first):
        next(data)
    return data


def steps(run: Any, first: int, count: int) -> list[float]:
    from megatron.training.step import train_step

    data = batches_from(run, first)
    return [train_step(run, data).loss for _ in range(count)]


def checked_step(run: Any, index: int) -> tuple[float, float]:
    """Step on batch ``index``; returns (the norm the optimizer used, the norm of the whole
    model's gradients, found by gathering them: a tensor equal on every rank is one
    replicated parameter, counted once, any other is a shard, counted on every rank)."""
    import torch.distributed as dist

    inputs, labels = next(batches_from(run, index))
    run.engine.backward(run.loss_fn(run.engine(inputs), labels))
    squares = 0.0
    for p in run.engine.module.parameters():
        mine = p.grad.float()
        copies = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(copies, mine)
        same = all(torch.equal(c, copies[0]) for c in copies)
        squares += sum(float(c.double().square().sum()) for c in (copies[:1] if same else copies))
    run.engine.step()
    return float(run.engine.get_global_grad_norm()), squares ** 0.5


def masters(run: Any) -> list[torch.Tensor]:
    return [m.detach().clone() for ms in run.engine.optimizer.fp32_groups for m in ms]


def describe(run: Any) -> dict[str, Any]:
    engine = run.engine
    return {
        "optimizer": type(engine.optimizer).__name__,
        "deepspeed_bf16": bool(engine.bfloat16_enabled()),
        "param_dtypes": sorted({str(p.dtype) for p in engine.module.parameters()}),
        "buffer_dtypes": sorted({str(b.dtype) for b in engine.module.buffers()
                                 if b.is_floating_point()}),
        "shm": getattr(engine.allreduce_gradients, "__self__", None) is None,
        "guard": run.guard is not None,
    }


def compare(rank: int, world_size: int, out: str) -> None:
    os.environ["LOCAL_SIZE"] = str(world_size)  # as DeepSpeed's launcher sets it
    os.environ["MEGATRON_DP_OPTIMIZER"] = "replicated"
    report: dict[str, Any] = {}
    for layout, tp in LAYOUTS.items():
        root = Path(out) / layout
        ours = build("ours", tp)
        found: dict[str, Any] = {"ours": describe(ours), "losses": steps(ours, 0, 3)}
        ours.engine.save_checkpoint(str(root), tag="ours3")
        found["norms_step4"] = checked_step(ours, 3)
        after_ours = masters(ours)
        ours.engine.destroy()

        theirs = build("deepspeed", tp)
        found["deepspeed"] = describe(theirs)
        theirs.engine.load_checkpoint(str(root), tag="ours3")
        found["deepspeed_norms_step4"] = checked_step(theirs, 3)
        after_theirs = masters(theirs)
        found["masters_max_rel"] = max(
            float(((a - b).abs() / b.abs().clamp_min(1e-3)).max())
            for a, b in zip(after_ours, after_theirs, strict=True))
        theirs.engine.save_checkpoint(str(root), tag="deepspeed4")
        theirs.engine.destroy()

        again = build("ours", tp)
        again.engine.load_checkpoint(str(root), tag="deepspeed4")
        found["reload_equal"] = all(torch.equal(a, b) for a, b in
                                    zip(masters(again), after_theirs, strict=True))
        found["reload_steps"] = again.engine.optimizer.state[
            again.engine.optimizer.fp32_groups[0][0]]["step"].item()
        again.engine.destroy()
        report[layout] = found
    os.environ["MEGATRON_BF16_OPTIMIZER"] = "ours"
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("master_weights")
    run_distributed(compare, 2, 280.0, str(out))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_ours_is_taken_at_stage_0_and_deepspeed_sees_fp32(reports, layout: str) -> None:
    for r in reports:
        mine, theirs = r[layout]["ours"], r[layout]["deepspeed"]
        assert mine["optimizer"] == "MasterWeights" and not mine["deepspeed_bf16"]
        assert theirs["optimizer"] == "FP16_UnfusedOptimizer" and theirs["deepspeed_bf16"]
        assert mine["param_dtypes"] == theirs["param_dtypes"] == ["torch.bfloat16"]
        assert mine["buffer_dtypes"] == theirs["buffer_dtypes"]  # buffers keep their dtype
        assert not mine["guard"]  # it checks the norm itself
        # bf16 gradients averaged in shared memory, as in DeepSpeed's bf16 mode
        assert mine["shm"] == theirs["shm"] == (layout == "dp2")


def test_one_step_from_one_checkpoint_matches_deepspeeds_wrapper(reports) -> None:
    """Data parallel: the same fp32 update up to the order of the clip's multiplication."""
    for r in reports:
        found = r["dp2"]
        assert found["masters_max_rel"] < 1e-5, found["masters_max_rel"]
        used, whole = found["deepspeed_norms_step4"]
        assert used == pytest.approx(whole, rel=1e-5)
        assert found["losses"][2] < found["losses"][0]  # it trained


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_clipping_norm_is_the_whole_models(reports, layout: str) -> None:
    """Under TP=2 as well: DeepSpeed's wrapper tests the gradients, not the parameters, for
    being model-parallel, so on tensor rank 1 it drops every shard and clips by less than
    the whole norm (about 10% less here); that is why its TP masters are not compared."""
    for r in reports:
        used, whole = r[layout]["norms_step4"]
        assert used == pytest.approx(whole, rel=1e-5)
        assert whole > CONFIG["gradient_clipping"]  # so the clip was applied


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_reads_the_others_checkpoint(reports, layout: str) -> None:
    for r in reports:
        assert r[layout]["reload_equal"]
        # 3 steps of ours, then DeepSpeed's one: the saved Adam step count carries over.
        assert r[layout]["reload_steps"] == 4


def resume_without_optimizer(rank: int, world_size: int, out: str) -> None:
    """Train 2 steps and save; a run with another seed resumes with ``no_load_optim``."""
    from megatron.training import checkpointing as ckpt
    from megatron.training.pretrain import resume

    os.environ["LOCAL_SIZE"] = "1"
    first = build("ours", 1, gpus=1, save=out, load=out, seed=1234)
    steps(first, 0, 2)
    ckpt.save_checkpoint(first.engine, out, 2, {"iteration": 2}, {}, is_rank0=True,
                         barrier=lambda: None)
    saved = [p.detach().float().clone() for p in first.engine.module.parameters()]
    first.engine.destroy()

    second = build("ours", 1, gpus=1, save=out, load=out, seed=99, no_load_optim=True)
    fresh = [m.clone() for m in masters(second)]
    resume(second)
    loaded = masters(second)
    Path(out, "resume.json").write_text(json.dumps({
        "masters_are_the_loaded_weights": all(
            any(torch.equal(m, s) for s in saved) for m in loaded),
        "masters_changed": any(not torch.equal(a, b) for a, b in zip(fresh, loaded,
                                                                      strict=True)),
    }))


def test_resuming_without_optimizer_state_takes_masters_from_the_weights(
        tmp_path: Path) -> None:
    """DeepSpeed refreshes the fp32 masters only for a module-only load; with no_load_optim
    the first step would otherwise write the new run's initial weights back."""
    run_distributed(resume_without_optimizer, 1, 200.0, str(tmp_path))
    found = json.loads((tmp_path / "resume.json").read_text())
    assert found["masters_changed"] and found["masters_are_the_loaded_weights"]
