"""Memory of a 2-process TP=2 run: peak RSS per rank, and parameters per rank vs TP=1.

The model (hidden 64, 2 layers, 4 heads, FFN 256, vocab 128, 64 learned positions, untied
output) is trained for a few steps through ``engine.build_run`` with model_parallel_size 2.
Each rank reports its peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) and its
parameters split by the ``tp_dim`` attribute the layers carry (None or absent: replicated).

Hand count of the same model at TP=1 (h = 64, ffn = 256, V = 128, P = 64, L = 2):

    sharded per block   qkv 3h*h + 3h = 12480, dense weight h*h = 4096,
                        linear1 ffn*h + ffn = 16640, linear2 weight h*ffn = 16384 -> 49600
    sharded elsewhere   word embeddings V*h = 8192, final_linear V*h = 8192
    sharded total       2 * 49600 + 16384 = 115584
    replicated/block    2 layernorms 4h = 256, dense bias h, linear2 bias h -> 384
    replicated total    2 * 384 + final norm 2h = 128 + position table P*h = 4096 -> 4992

so each TP=2 rank must hold 115584 / 2 = 57792 sharded + 4992 replicated = 62784.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import pytest

from tests.distributed import run_distributed
from tests.e2e import sweep_models as sweep
from tests.e2e.sweep_data import rank_batches

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(300)]

CONFIG: dict[str, Any] = dict(
    sweep.BASE, hidden_size=64, intermediate_size=256, seq_length=64,
    max_position_embeddings=64, padded_vocab_size=128, pos_emb="learned",
    no_weight_tying=True, model_parallel_size=2, train_micro_batch_size_per_gpu=4,
)
SHARDED_TP1 = 115584
REPLICATED = 4992
REPLICATED_NAMES = {  # name suffixes of every replicated parameter (4992 elements)
    "position_embeddings.weight", "input_layernorm.weight", "input_layernorm.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias",
    "attention.dense.bias", "mlp.linear2.bias", "norm.weight", "norm.bias",
}
PEAK_RSS_LIMIT_MIB = 3072
"""Generous ceiling: torch + DeepSpeed in a fresh interpreter take about 0.5-1 GiB."""
_STEPS = 3


def split_counts(named_params: Any) -> dict[str, dict[str, int]]:
    """``{"sharded": {name: numel}, "replicated": {...}}`` from each parameter's tp_dim."""
    counts: dict[str, dict[str, int]] = {"sharded": {}, "replicated": {}}
    for name, param in named_params:
        kind = "replicated" if getattr(param, "tp_dim", None) is None else "sharded"
        counts[kind][name] = param.numel()
    return counts


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def tp2_worker(rank: int, world_size: int, out_dir: str) -> None:
    """Train the model at TP=2 for a few steps; write counts and peak RSS per rank."""
    from megatron.neox_arguments import NeoXArgs, Resources
    from megatron.training.engine import build_run
    from megatron.training.step import train_step

    before = _peak_rss_mib()
    args = NeoXArgs.from_dict(CONFIG, resources=Resources(num_nodes=1,
                                                          gpus_per_node=world_size))
    run = build_run(args)
    data = rank_batches(run.groups.dp.rank, run.groups.dp.size,
                        args.train_micro_batch_size_per_gpu, args.seq_length, 128)
    losses = [train_step(run, data).loss for _ in range(_STEPS)]
    report = {"rank": rank, "tp_rank": run.groups.tp.rank, "tp_size": run.groups.tp.size,
              "counts": split_counts(run.engine.module.named_parameters()),
              "peak_rss_before_build_mib": before, "peak_rss_mib": _peak_rss_mib(),
              "losses": losses}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("memory")
    run_distributed(tp2_worker, 2, 240, str(out))
    found = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    for r in found:
        total = sum(r["counts"]["sharded"].values()) + sum(r["counts"]["replicated"].values())
        print(f"rank {r['rank']} (tp rank {r['tp_rank']}): peak RSS {r['peak_rss_mib']:.0f} "
              f"MiB (before build_run {r['peak_rss_before_build_mib']:.0f} MiB), "
              f"{total} parameters")
    return found


@pytest.fixture(scope="module")
def tp1_counts() -> dict[str, dict[str, int]]:
    """The same model built in this process at TP=1 (no torch.distributed needed)."""
    from megatron.model import ModelSpec, build_model
    from megatron.neox_arguments import NeoXArgs, Resources
    from megatron.parallel import ProcessGroups

    args = NeoXArgs.from_dict(dict(CONFIG, model_parallel_size=1),
                              resources=Resources(num_nodes=1, gpus_per_node=1))
    model, _ = build_model(ModelSpec.from_args(args), ProcessGroups.single(),
                           pipe_parallel_size=0)
    return split_counts(model.named_parameters())


def test_tp1_matches_the_hand_count(tp1_counts: dict[str, dict[str, int]]) -> None:
    assert sum(tp1_counts["sharded"].values()) == SHARDED_TP1
    assert sum(tp1_counts["replicated"].values()) == REPLICATED
    for name in tp1_counts["replicated"]:
        assert name.endswith(tuple(REPLICATED_NAMES)), name


def test_tp2_halves_sharded_parameters(reports: list[dict[str, Any]],
                                       tp1_counts: dict[str, dict[str, int]]) -> None:
    for r in reports:
        assert r["tp_size"] == 2
        sharded, replicated = r["counts"]["sharded"], r["counts"]["replicated"]
        # Same parameters, in the same roles, as at TP=1.
        assert sharded.keys() == tp1_counts["sharded"].keys()
        assert replicated == tp1_counts["replicated"]
        assert sum(sharded.values()) * 2 == sum(tp1_counts["sharded"].values())
        for name, numel in sharded.items():
            assert numel * 2 == tp1_counts["sharded"][name], name
        assert sum(sharded.values()) + sum(replicated.values()) == 57792 + 4992
    assert {r["tp_rank"] for r in reports} == {0, 1}


def test_peak_rss_is_reported_and_bounded(reports: list[dict[str, Any]]) -> None:
    for r in reports:
        assert 0 < r["peak_rss_before_build_mib"] <= r["peak_rss_mib"] < PEAK_RSS_LIMIT_MIB
        # The run really trained (3 finite losses, near ln 128 = 4.85 at the start).
        assert len(r["losses"]) == _STEPS and abs(r["losses"][0] - 4.85) < 1.0
