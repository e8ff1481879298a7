"""The benchmark's arithmetic: MFU, alternation, pooling, data-wait share, table, options."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import benchmark  # noqa: E402


def test_mfu_is_achieved_over_peak() -> None:
    # 6e12 FLOPs in 3 s is 2e12 FLOP/s; over a 4e12 peak that is one half.
    assert benchmark.model_flops_utilisation(6e12, 3.0, 4e12) == pytest.approx(0.5)


def test_alternation_starts_each_side_first_equally_often() -> None:
    assert benchmark.alternation(3) == ["ours", "hf", "hf", "ours", "ours", "hf"]
    assert benchmark.alternation(0) == []


def test_merge_pools_steps_and_keeps_largest_rss() -> None:
    a = benchmark.Measurement("ours", [1.0, 3.0], [0.1, 0.1], 100.0, 5.0, [2.0, 6.0])
    b = benchmark.Measurement("ours", [2.0], [0.4], 250.0, 7.0, [3.0])
    pooled = benchmark.merge([a, b])
    assert pooled.step_s == [1.0, 3.0, 2.0]
    assert pooled.median_step_s == 2.0
    assert pooled.peak_rss_mb == 250.0
    assert pooled.setup_s == 6.0
    assert pooled.median_cpu_s == 3.0
    assert pooled.data_fraction == pytest.approx(0.6 / 6.0)


def test_row_and_ratio_table() -> None:
    m = benchmark.Measurement("hf", [2.0, 4.0, 3.0], [0.0, 0.3, 0.0], 800.0, 1.0,
                              [4.0, 8.0, 8.0])
    r = benchmark.row("19M", "fp32", m, tokens=4096, flops=9e11, peak=1e12)
    assert r["tokens_per_s"] == pytest.approx(4096 / 3.0)
    assert r["mfu"] == pytest.approx(0.3)
    assert r["tokens_per_cpu_s"] == pytest.approx(4096 / 8.0)
    assert r["data_wait"] == pytest.approx(0.3 / 9.0)
    ratio = {"config": "19M", "precision": "fp32", "side": "ours/hf", "tokens_per_s": 1.5,
             "tokens_per_cpu_s": 1.25, "peak_rss_mb": 0.5, "peak_tflops": 0.1}
    text = benchmark.format_table([r, ratio])
    assert "1365" in text and "30.0%" in text and " 512 " in text
    assert "1.50x" in text and "1.25x" in text and "0.50x" in text and "100.0 GFLOP/s" in text


def test_random_batches_are_shifted_tokens() -> None:
    (tokens, pos), (labels, mask) = next(benchmark.random_batches(2, 5, 7))
    assert tokens.shape == labels.shape == pos.shape == mask.shape == (2, 5)
    assert (tokens[:, 1:] == labels[:, :-1]).all()
    assert int(tokens.max()) < 7 and pos[1].tolist() == [0, 1, 2, 3, 4]


def test_quick_defaults_and_explicit_steps() -> None:
    quick = benchmark.parse_args(["--quick"])
    assert (quick.steps, quick.warmup, quick.repeats) == (2, 1, 1)
    assert benchmark.parse_args(["--quick", "--steps", "5"]).steps == 5


def test_unknown_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark.main(["--configs", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_bench_configs_have_the_requested_shapes() -> None:
    from megatron.model import ModelSpec

    for name, seq, micro in (("19M", 1024, 4), ("pythia-70m", 2048, 2)):
        args = benchmark.load_args(name, "bf16")
        spec = ModelSpec.from_args(args)
        assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads) == (6, 512, 8)
        assert (spec.seq_length, args.train_micro_batch_size_per_gpu) == (seq, micro)
        assert spec.padded_vocab_size == 50304 and spec.rotary_dims == 16  # 0.25 of 64
        assert spec.gpt_j_residual and not spec.tie_word_embeddings
        assert args.precision == "bf16"
