"""A run killed with SIGKILL resumes exactly; SIGTERM finishes the step, saves and exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.e2e.launch import LAYOUTS, run_deepy, start_deepy, tiny_config, train_losses

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1800)]

# Same layout, same fp32 arithmetic: a resumed run must match to the last bit we print.
RESUME_TOLERANCE = 1e-6


def _wait_for(condition: Callable[[], bool], proc, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"run ended early with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def _latest_step(root: Path) -> int:
    latest = root / "latest"
    if not latest.is_file():
        return 0
    return int(latest.read_text().strip().removeprefix("global_step") or 0)


@pytest.mark.parametrize("layout", ["dp2", "dp2_zero1", "pp2"])
def test_resume_after_sigkill_equals_uninterrupted(
    runs: dict[str, Path], char_corpus: str, tmp_path: Path, layout: str
) -> None:
    config = tiny_config(
        char_corpus,
        tmp_path,
        checkpoint_factor=1,
        keep_last_n_checkpoints=3,
        **LAYOUTS[layout],
    )
    proc = start_deepy(config, tmp_path)
    ckpts = tmp_path / "checkpoints"
    _wait_for(lambda: _latest_step(ckpts) >= 8, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _latest_step(ckpts)
    assert 8 <= killed_at < 20, "the run finished before it could be killed"

    config["master_port"] = tiny_config(char_corpus, tmp_path)["master_port"]
    resumed = run_deepy(config, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert "checkpoint validated" in resumed.stdout + resumed.stderr
    sharded = "optimizer step sharded over 2 data-parallel ranks" in resumed.stdout + resumed.stderr
    assert sharded == (layout == "dp2")  # stage 0 only: ZeRO shards by itself

    reference = train_losses(runs[layout])
    losses = train_losses(tmp_path)  # later lines (the resumed run) win
    for it in range(killed_at + 1, 21):
        assert abs(losses[it] - reference[it]) <= RESUME_TOLERANCE, (it, losses[it], reference[it])


def _train_workers(proc: psutil.Popen | object) -> list[psutil.Process]:
    parent = psutil.Process(proc.pid)
    return [
        p
        for p in parent.children(recursive=True)
        if "train.py" in (cmd := " ".join(p.cmdline())) and "--local_rank" in cmd
    ]


def test_sigterm_saves_and_exits_cleanly(char_corpus: str, tmp_path: Path) -> None:
    config = tiny_config(
        char_corpus, tmp_path, num_gpus=2, train_iters=5000, checkpoint_factor=10000
    )
    proc = start_deepy(config, tmp_path)
    metrics = tmp_path / "logs" / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 5, proc)
    workers = _train_workers(proc)
    assert len(workers) == 2
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, (tmp_path / "deepy.log").read_text()[-4000:]
    step = _latest_step(tmp_path / "checkpoints")
    logged = [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()]
    assert 5 <= step < 5000
    assert step == max(logged)  # the step in flight finished, then was saved
    manifest = tmp_path / "checkpoints" / f"global_step{step}" / "manifest.json"
    assert manifest.is_file()
    assert "received signal 15" in (tmp_path / "deepy.log").read_text()


def test_checkpoint_validation_rejects_a_different_model(
    runs: dict[str, Path], char_corpus: str, tmp_path: Path
) -> None:
    # The single-process reference saved with checkpoint validation on; resume a copy of it.
    shutil.copytree(runs["single"] / "checkpoints", tmp_path / "checkpoints")
    assert _latest_step(tmp_path / "checkpoints") == 20
    # Same parameter shapes, different function: the saved weights no longer fit.
    config = tiny_config(char_corpus, tmp_path, activation="relu")
    second = run_deepy(config, tmp_path)
    assert second.returncode == 1
    assert "does not match this config" in second.stderr
