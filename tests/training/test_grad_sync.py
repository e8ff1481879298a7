"""Gradient averaging through shared memory trains exactly as DeepSpeed's own all-reduce.

Two real processes build the same tiny model through ``engine.build_run`` twice: once as
shipped (stage 0 on CPU ranks of one machine, so the shared-memory path) and once with
``MEGATRON_DP_REDUCE=deepspeed`` (DeepSpeed's flatten + gloo all-reduce). Four optimizer
steps with 2 accumulation micro-batches each must give identical losses, gradient norms and
final weights: with two ranks both paths compute (a + b) * 0.5 per element.
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
    sweep.BASE, pos_emb="rotary", no_weight_tying=True, model_parallel_size=1,
    train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2,
)
STEPS = 4


def train(stage: int) -> tuple[Any, list[float], list[float]]:
    from megatron.neox_arguments import NeoXArgs, Resources
    from megatron.training.engine import build_run
    from megatron.training.step import train_step

    args = NeoXArgs.from_dict(dict(CONFIG, zero_optimization={"stage": stage}),
                              resources=Resources(num_nodes=1, gpus_per_node=2))
    run = build_run(args)
    data = rank_batches(run.groups.dp.rank, run.groups.dp.size,
                        args.train_micro_batch_size_per_gpu, sweep.SEQ, sweep.VOCAB)
    results = [train_step(run, data) for _ in range(STEPS)]
    return run, [r.loss for r in results], [r.grad_norm for r in results]


def uses_shm(run: Any) -> bool:
    """The engine's reduction was replaced (a plain function, not DeepSpeed's bound method)."""
    return getattr(run.engine.allreduce_gradients, "__self__", None) is None


def compare_paths(rank: int, world_size: int, out: str) -> None:
    os.environ["LOCAL_SIZE"] = str(world_size)  # as DeepSpeed's launcher sets it
    report: dict[str, Any] = {}
    for mode in ("shm", "deepspeed"):
        os.environ["MEGATRON_DP_REDUCE"] = mode
        run, losses, norms = train(stage=0)
        report[mode] = {"shm": uses_shm(run), "losses": losses, "norms": norms}
        torch.save(run.engine.module.state_dict(), Path(out) / f"{mode}{rank}.pt")
        run.engine.destroy()
    os.environ["MEGATRON_DP_REDUCE"] = "shm"
    run, _, _ = train(stage=1)  # ZeRO reduces by itself: left alone
    report["zero1_shm"] = uses_shm(run)
    os.environ["MEGATRON_DP_REDUCE"] = "bogus"
    try:
        train(stage=0)
    except ValueError as err:
        report["bogus"] = str(err)
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("grad_sync")
    run_distributed(compare_paths, 2, 240.0, str(out))
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_shared_memory_path_is_taken_at_stage_0_only(reports) -> None:
    _, found = reports
    for r in found:
        assert r["shm"]["shm"] and not r["deepspeed"]["shm"]
        assert not r["zero1_shm"]
        assert "MEGATRON_DP_REDUCE='bogus'" in r["bogus"] and "'shm' or 'deepspeed'" in r["bogus"]


def test_losses_and_grad_norms_are_identical_to_deepspeeds(reports) -> None:
    _, found = reports
    for r in found:
        assert r["shm"]["losses"] == r["deepspeed"]["losses"]
        assert r["shm"]["norms"] == r["deepspeed"]["norms"]
        assert r["shm"]["losses"][-1] < r["shm"]["losses"][0]  # it did train


def test_final_weights_are_bitwise_identical_on_every_rank(reports) -> None:
    out, _ = reports
    weights = {(m, r): torch.load(out / f"{m}{r}.pt") for m in ("shm", "deepspeed")
               for r in range(2)}
    reference = weights["deepspeed", 0]
    for key, state in weights.items():
        assert state.keys() == reference.keys()
        for name, value in state.items():
            assert torch.equal(value, reference[name]), (key, name)
