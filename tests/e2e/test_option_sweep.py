"""Every architecture option trains: tiny models through real 2-process DeepSpeed engines.

The models come from ``sweep_models`` (generated from the registries, plus every pos_emb x
residual pair). One ``run_distributed`` launch trains them all in turn: each is built from
its GPT-NeoX config by ``engine.build_run`` (process groups, model, optimizer, LR schedule,
``deepspeed.initialize``), as TP=2 or DP=2, and takes 20 optimizer steps on a synthetic
corpus with a learnable rule. Its loss must fall.

The corpus (``sweep_data``): arithmetic progressions mod 64 with strides 1 to 3; uniform
guessing costs ln 64 = 4.16 nats and the rule can be learned down to near 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from megatron.model.kernels import ATTENTION_KERNELS
from megatron.model.norms import NORMS
from tests.distributed import run_distributed
from tests.e2e import sweep_models as sweep
from tests.e2e.sweep_data import STRIDES, rank_batches, sample_batch

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(420)]

FALL_NATS = 0.3
"""Required drop of the mean loss from the first 5 steps to the last 5 (from about 4.2).
A model that does not learn drifts by under 0.05; the slowest learners (sinusoidal) drop
about 0.5, the others 1.4 to 3."""
_TIMEOUT_S = 300


def _built(run: Any) -> dict[str, Any]:
    """What the built model really uses, to check the config reached it."""
    block = run.engine.module.sequential[2]
    kernels = {ATTENTION_KERNELS.get(k): k for k in ATTENTION_KERNELS.keys()}
    spec = dataclasses.asdict(run.spec)
    return {"spec": {k: v for k, v in spec.items() if not isinstance(v, tuple)},
            "attention_config": list(run.spec.attention_config),
            "norm_class": type(block.input_layernorm).__name__,
            "kernel": kernels[block.attention.kernel], "window": block.attention.window,
            "lr": run.engine.get_lr()[0], "tp": run.groups.tp.size, "dp": run.groups.dp.size,
            "has_final_linear": hasattr(run.engine.module.sequential[-1], "final_linear")}


def train_all(rank: int, world_size: int, out_path: str) -> None:
    """Worker: build and train every sweep model; rank 0 writes losses and facts as JSON."""
    import time

    from megatron.neox_arguments import NeoXArgs, Resources
    from megatron.training.engine import build_run
    from megatron.training.step import train_step

    # has_cuda keeps 'flash' in attention_config, so the model's flash kernel (and its CPU
    # fallback to SDPA) is what runs, not the config's CPU substitution.
    resources = Resources(num_nodes=1, gpus_per_node=world_size, has_cuda=True)
    results = []
    for chosen in sweep.models():
        begin = time.monotonic()
        args = NeoXArgs.from_dict(sweep.to_config(chosen), resources=resources)
        run = build_run(args)
        data = rank_batches(run.groups.dp.rank, run.groups.dp.size,
                            args.train_micro_batch_size_per_gpu, sweep.SEQ, sweep.VOCAB)
        losses = [train_step(run, data).loss for _ in range(sweep.STEPS)]
        results.append({"chosen": chosen, "losses": losses, **_built(run),
                        "seconds": time.monotonic() - begin})
        run.engine.destroy()
    if rank == 0:
        Path(out_path).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def sweep_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("sweep") / "results.json"
    run_distributed(train_all, 2, _TIMEOUT_S, str(out))
    results = json.loads(out.read_text())
    _print_table(results)
    return results


def _print_table(results: list[dict[str, Any]]) -> None:
    for i, r in enumerate(results):
        c, losses = r["chosen"], r["losses"]
        print(f"{i:2d} {c['layout']} {c['pos_emb']:10s} {c['residual']:14s} {c['norm']:24s} "
              f"{c['activation']:8s} {c['attention']:6s} {c['kv_heads']} tied={c['tied']} "
              f"qk_ln={c['use_qk_layernorm']} off={c['bias_off'] or '-'} init={c['init_method']}"
              f"/{c['output_layer_init_method']}: {sum(losses[:5]) / 5:.3f} -> "
              f"{sum(losses[-5:]) / 5:.3f} ({r['seconds']:.1f} s)")


def test_corpus_rows_are_progressions_with_a_small_stride() -> None:
    rows = sample_batch(step=3, rows=64, seq=8, vocab=64)
    assert rows.shape == (64, 9)
    steps = (rows[:, 1:] - rows[:, :-1]) % 64  # [64, 8]
    assert (steps == steps[:, :1]).all()  # one stride per row
    assert set(steps[:, 0].tolist()) == set(STRIDES)
    assert len(set(rows[:, 0].tolist())) > 20  # starts spread over the vocabulary


def test_data_parallel_ranks_split_the_global_batch() -> None:
    (whole, pos), (labels, mask) = next(rank_batches(0, 1, 8, 8, 64))
    halves = [next(rank_batches(r, 2, 4, 8, 64)) for r in range(2)]
    assert torch.equal(torch.cat([h[0][0] for h in halves]), whole)
    assert torch.equal(torch.cat([h[1][0] for h in halves]), labels)
    assert torch.equal(labels[:, :-1], whole[:, 1:])  # labels are the next tokens
    assert pos[0].tolist() == list(range(8)) and mask.sum() == 8 * 8


def test_every_registry_value_is_in_some_model() -> None:
    table = sweep.coverage(sweep.models())
    for option, values in sweep.expected_values().items():
        missing = set(values) - set(table[option])
        assert not missing, f"{option}: no sweep model uses {sorted(missing)}"
    # Both layouts for every positional embedding and every residual style.
    for option in ("pos_emb", "residual"):
        for value in table[option]:
            layouts = {m["layout"] for m in sweep.models() if m[option] == value}
            assert layouts == {"tp2", "dp2"}, (option, value, layouts)


def test_registries_without_a_config_key_hold_what_the_sweep_expects() -> None:
    # Every block is a 'transformer'; a new layer type must be added to the sweep by hand.
    assert sweep.layer_types() == ["transformer"]


def test_every_pos_emb_residual_pair_has_a_model() -> None:
    pairs = {(m["pos_emb"], m["residual"]) for m in sweep.models()}
    assert len(pairs) == 6 * 3  # 6 positional embeddings x 3 residual styles
    assert {p for p, _ in pairs} >= {"learned", "sinusoidal", "rotary", "alibi", "rpe", "none"}


def test_loss_falls_for_every_model(sweep_results: list[dict[str, Any]]) -> None:
    assert len(sweep_results) == len(sweep.models())
    failures = []
    for r in sweep_results:
        losses = r["losses"]
        assert len(losses) == sweep.STEPS and all(math.isfinite(x) for x in losses)
        # Untrained: close to uniform over the 64-token vocabulary.
        assert abs(losses[0] - math.log(sweep.VOCAB)) < 1.0, (r["chosen"], losses[0])
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        if not last < first - FALL_NATS:
            failures.append((r["chosen"], round(first, 3), round(last, 3)))
    assert not failures, failures


def test_built_models_use_the_swept_options(sweep_results: list[dict[str, Any]]) -> None:
    for r in sweep_results:
        c, spec = r["chosen"], r["spec"]
        assert (r["tp"], r["dp"]) == ((2, 1) if c["layout"] == "tp2" else (1, 2))
        assert r["lr"] == sweep.BASE["optimizer"]["params"]["lr"]  # constant schedule
        assert (spec["pos_emb"], spec["norm"], spec["activation"]) == (
            c["pos_emb"], c["norm"], c["activation"])
        assert (spec["init_method"], spec["output_layer_init_method"]) == (
            c["init_method"], c["output_layer_init_method"])
        assert spec["num_kv_heads"] == sweep.KV_HEADS[c["kv_heads"]]
        assert spec["gpt_j_residual"] == (c["residual"] != "sequential")
        assert spec["gpt_j_tied"] == (c["residual"] == "gpt_j_tied")
        assert spec["tie_word_embeddings"] == c["tied"] != r["has_final_linear"]
        assert spec["use_qk_layernorm"] == c["use_qk_layernorm"]
        for key in ("use_bias_in_norms", "use_bias_in_mlp", "use_bias_in_attn_linear"):
            assert spec[key] == (key != c["bias_off"]), (key, c)
        assert r["attention_config"] == [c["attention"], "global"]
        assert r["norm_class"] == NORMS.get(c["norm"]).__name__


def test_attention_types_pick_their_kernels(sweep_results: list[dict[str, Any]]) -> None:
    expected = {"global": ("sdpa", None), "local": ("sdpa", 8), "flash": ("flash", None)}
    for r in sweep_results:
        assert (r["kernel"], r["window"]) == expected[r["chosen"]["attention"]], r["chosen"]
    # 'reference' is the tests' oracle kernel: no config value selects it.
    used = {r["kernel"] for r in sweep_results} | {"reference"}
    assert used == set(ATTENTION_KERNELS.keys())
