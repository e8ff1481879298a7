"""Fixtures for end-to-end runs: a small char-level corpus and a deepy.py runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron.data.indexed_dataset import make_builder
from tests.e2e.launch import LAYOUTS, run_deepy, tiny_config

REPO = Path(__file__).resolve().parents[2]
SHARED_TEXT = REPO.parent / "shared" / "data" / "enwik8_first100.txt"


@pytest.fixture(scope="session")
def char_corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One document per line of the enwik8 sample, as UTF-8 bytes (CharLevelTokenizer ids)."""
    prefix = tmp_path_factory.mktemp("corpus") / "enwik8_text_document"
    builder = make_builder(f"{prefix}.bin", vocab_size=512)
    for line in SHARED_TEXT.read_text(encoding="utf-8").splitlines():
        if line.strip():
            builder.add_item(np.frombuffer(line.encode("utf-8"), dtype=np.uint8).astype(np.int64))
            builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.fixture(scope="session")
def runs(char_corpus: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each layout trained for 20 iterations, uninterrupted; the references for resume tests."""
    results = {}
    for name, overrides in LAYOUTS.items():
        workdir = tmp_path_factory.mktemp(name)
        proc = run_deepy(tiny_config(char_corpus, workdir, **overrides), workdir)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        results[name] = workdir
    return results
