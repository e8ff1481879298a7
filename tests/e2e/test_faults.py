"""Non-finite updates are skipped and counted; too many in a row stop the run with a save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.launch import run_deepy, tiny_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1800)]


def test_consecutive_nonfinite_steps_stop_with_checkpoint(char_corpus: str, tmp_path: Path) -> None:
    # An absurd learning rate blows the weights up after the first update; from then on every
    # loss and gradient is non-finite, and each of those updates must be withheld.
    config = tiny_config(
        char_corpus,
        tmp_path,
        optimizer={"type": "Adam", "params": {"lr": 1.0e30}},
        min_lr=1.0e29,
        warmup=0.0,
        gradient_clipping=0.0,
        max_consecutive_skipped_steps=3,
        checkpoint_factor=1000,
    )
    proc = run_deepy(config, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "3 consecutive updates skipped" in output
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
    skipped = {r["iteration"]: r.get("skipped_iterations") or 0 for r in records}
    last = max(skipped)
    assert last < 20, "the run should have stopped early"
    assert skipped[last] >= 3
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"global_step{last}"
