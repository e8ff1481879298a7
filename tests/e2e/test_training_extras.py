"""End to end: norm and noise-scale metrics, a profiler window and step timers in a real run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.e2e.launch import read_metrics, run_deepy, tiny_config

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(400)]

EXTRAS = {
    "train_iters": 4,
    "checkpoint_factor": 4,
    "eval_interval": 100,
    "log_param_norm": True,
    "log_grad_norm": True,
    "log_gradient_noise_scale": True,
    "gradient_noise_scale_n_batches": 2,
    "profile": True,
    "profile_step_start": 2,
    "profile_step_stop": 3,
    "wall_clock_breakdown": True,
    "memory_profiling": True,
}


def _train(char_corpus: str, workdir: Path, **overrides: object) -> list[dict]:
    config = tiny_config(char_corpus, workdir, **{**EXTRAS, **overrides})
    config["memory_profiling_path"] = str(workdir / "memory")
    proc = run_deepy(config, workdir)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return read_metrics(workdir)


def _checkpoint_norm(workdir: Path, tag: str) -> float:
    state = torch.load(workdir / "checkpoints" / tag / "mp_rank_00_model_states.pt",
                       map_location="cpu", weights_only=False)
    return math.sqrt(sum(float(t.float().pow(2).sum()) for t in state["module"].values()))


@pytest.fixture(scope="module")
def single(char_corpus: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    workdir = tmp_path_factory.mktemp("extras_single")
    return workdir, _train(char_corpus, workdir)


def test_param_norm_equals_the_saved_weights_norm(single: tuple[Path, list]) -> None:
    workdir, metrics = single
    last = next(m for m in metrics if m["iteration"] == 4)
    assert last["param_norm"] == pytest.approx(_checkpoint_norm(workdir, "global_step4"),
                                               rel=1e-6)
    per_param = {k: v for k, v in last.items() if k.startswith("parameter_norms/")}
    assert math.sqrt(sum(v * v for v in per_param.values())) == pytest.approx(
        last["param_norm"], rel=1e-6)


def test_grad_norms_and_noise_scale_are_logged(single: tuple[Path, list]) -> None:
    _, metrics = single
    by_iter = {m["iteration"]: m for m in metrics}
    grads = {k: v for k, v in by_iter[3].items() if k.startswith("gradient_norms/")}
    assert grads and all(v > 0 for v in grads.values())
    # Clipping (gradient_clipping 1.0) comes after the capture: the unclipped per-parameter
    # norms add up to the global norm DeepSpeed reports.
    assert math.sqrt(sum(v * v for v in grads.values())) == pytest.approx(
        by_iter[3]["grad_norm"], rel=1e-4)
    assert by_iter[1].get("noise_scale") is None, "the first estimate needs 2 batches"
    assert by_iter[2]["noise_scale"] is not None and by_iter[4]["noise_scale"] is not None


def test_profile_window_trace_timers_and_peak_rss(single: tuple[Path, list]) -> None:
    workdir, metrics = single
    traces = sorted(p.name for p in (workdir / "logs" / "profile").iterdir())
    assert traces == ["rank0_iters2-3.pt.trace.json"]
    by_iter = {m["iteration"]: m for m in metrics}
    assert all(by_iter[i]["timers/forward"] > 0 for i in (1, 2, 3, 4))
    # Every log line carries the peak RSS; memory_profiling on CPU reports the same number.
    assert all(by_iter[i]["peak_rss_mb"] > 0 for i in (1, 2, 3, 4))
    assert by_iter[3]["peak_rss_mb"] <= by_iter[4]["peak_rss_mb"]


def test_tp2_norms_match_the_single_process_run(
    char_corpus: str, tmp_path: Path, single: tuple[Path, list]
) -> None:
    metrics = _train(char_corpus, tmp_path, num_gpus=2, model_parallel_size=2, profile=False,
                     memory_profiling=False)
    first = next(m for m in metrics if m["iteration"] == 1)
    ref = next(m for m in single[1] if m["iteration"] == 1)
    assert first["param_norm"] == pytest.approx(ref["param_norm"], rel=1e-5)
    assert first["gradient_norms/sequential.0.word_embeddings.weight"] == pytest.approx(
        ref["gradient_norms/sequential.0.word_embeddings.weight"], rel=1e-4)


def test_mup_base_shapes_then_a_wider_model_trains(char_corpus: str, tmp_path: Path) -> None:
    shapes = tmp_path / "base-shapes.yml"
    mup_keys = {"use_mup": True, "base_shapes_file": str(shapes), "mup_output_temp": 0.5,
                "mup_attn_temp": 1.0, "mup_embedding_mult": 2.0, "train_iters": 12,
                "checkpoint_factor": 100, "eval_interval": 100}
    base = tiny_config(char_corpus, tmp_path / "base", save_base_shapes=True, **mup_keys)
    proc = run_deepy(base, tmp_path / "base")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "sequential.0.word_embeddings.weight" in shapes.read_text()
    assert not (tmp_path / "base" / "logs" / "metrics.jsonl").exists(), "exits before training"
    wide = tiny_config(char_corpus, tmp_path / "wide", hidden_size=128, **mup_keys)
    proc = run_deepy(wide, tmp_path / "wide")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    losses = {m["iteration"]: m["lm_loss"] for m in read_metrics(tmp_path / "wide")
              if m.get("lm_loss") is not None}
    assert losses[12] < losses[1] - 0.5, losses
