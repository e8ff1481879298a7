"""`./deepy.py train.py` end to end in every layout: same losses, falling loss, checkpoints.

One fp32 config with dropout off is trained for 20 iterations as 1 process (plain, and with
ZeRO-1) and as 2 processes with TP=2, PP=2, DP=2 (stage 0), DP=2 + ZeRO-1 and DP=2 + ZeRO-3.
The global batch is the same (8 samples), so every layout must see the same data and compute
the same loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.launch import LAYOUTS, read_metrics, run_deepy, tiny_config, train_losses

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1800)]

# fp32 with a different reduction order (accumulation vs data parallel, split matmuls).
LOSS_TOLERANCE = 1e-4
# bf16 weights and activations against that fp32 run: a relative bound on each loss.
BF16_LOSS_TOLERANCE = 0.03


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_loss_falls(runs: dict[str, Path], name: str) -> None:
    losses = train_losses(runs[name])
    assert sorted(losses) == list(range(1, 21))
    first, last = losses[1], losses[20]
    # Char-level text over 256 byte values starts near ln(512) ~ 6.2; 20 steps must
    # take off well over a nat.
    assert first > 5.0
    assert last < first - 1.0, losses


@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "single"])
def test_layout_matches_single_process(runs: dict[str, Path], name: str) -> None:
    reference = train_losses(runs["single"])
    losses = train_losses(runs[name])
    for it in range(1, 6):
        assert abs(losses[it] - reference[it]) <= LOSS_TOLERANCE, (it, losses[it], reference[it])


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_data_wait_and_peak_rss_are_logged(runs: dict[str, Path], name: str) -> None:
    records = [r for r in read_metrics(runs[name]) if r.get("lm_loss") is not None]
    assert len(records) == 20
    processes = LAYOUTS[name]["num_gpus"]
    for r in records:
        # A prefetching iterator over a tiny model's batches: waits are short but not zero.
        assert 0.0 < r["data_wait_fraction"] < 0.5, r
        assert r["peak_rss_mb"] > 100.0, r  # torch alone is more than that
        # Summed over ranks: each rank holds about as much as rank 0.
        total, largest = r["peak_rss_mb_all_ranks"], r["peak_rss_mb_max_rank"]
        assert 0.5 * processes * r["peak_rss_mb"] < total < 2.0 * processes * r["peak_rss_mb"]
        assert r["peak_rss_mb"] <= largest <= total and total <= processes * largest
    assert records[-1]["peak_rss_mb"] >= records[0]["peak_rss_mb"]


def _checkpoint_files(workdir: Path, step: int) -> set[str]:
    return {p.name for p in (workdir / "checkpoints" / f"global_step{step}").iterdir()}


def test_plain_engine_checkpoint_layout(runs: dict[str, Path]) -> None:
    root = runs["tp2"] / "checkpoints"
    assert (root / "latest").read_text().strip() == "global_step20"
    files = _checkpoint_files(runs["tp2"], 20)
    assert {"mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt", "configs"} <= files
    assert (root / "global_step10").is_dir()


def test_pipeline_engine_checkpoint_layout(runs: dict[str, Path]) -> None:
    files = _checkpoint_files(runs["pp2"], 20)
    # 2 layers: 0 embedding, 2-3 blocks, 5 final norm; the tied output reuses layer 0.
    expected = {f"layer_{i:02d}-model_00-model_states.pt" for i in (0, 2, 3, 5)}
    assert expected <= files, files
    assert "layer_01-model_00-model_states.pt" not in files


def test_zero_checkpoint_has_optimizer_shards(runs: dict[str, Path]) -> None:
    files = _checkpoint_files(runs["dp2_zero1"], 20)
    shards = {f for f in files if f.endswith("_optim_states.pt")}
    assert len(shards) == 2, files


def test_bf16_zero1_on_two_processes_tracks_fp32(runs: dict[str, Path], char_corpus: str,
                                                 tmp_path: Path) -> None:
    """bf16 with ZeRO stage 1 and fp32 gradient accumulation (DeepSpeed's BF16 optimizer, the
    GPU bench configs' setting) on 2 data-parallel processes: the losses stay within bf16
    rounding of the fp32 single-process run's."""
    config = tiny_config(char_corpus, tmp_path, num_gpus=2, precision="bf16",
                         zero_optimization={"stage": 1},
                         data_types={"grad_accum_dtype": "fp32"}, train_iters=6)
    proc = run_deepy(config, tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    losses, reference = train_losses(tmp_path), train_losses(runs["single"])
    for it in range(1, 7):
        assert abs(losses[it] - reference[it]) <= BF16_LOSS_TOLERANCE * reference[it], (
            it, losses[it], reference[it])
