"""Shared fixtures: the GPT-NeoX reference corpus copied into a private temporary folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "neox-reference"
REFERENCE = REFERENCE.resolve()
CORPUS = "enwik8_first100_text_document"


@pytest.fixture
def reference_dir() -> Path:
    """The read-only folder of files GPT-NeoX wrote."""
    return REFERENCE


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    """Prefix of a private copy of the reference .bin/.idx (index caches land next to it)."""
    for suffix in (".bin", ".idx"):
        shutil.copy(REFERENCE / f"{CORPUS}{suffix}", tmp_path / f"{CORPUS}{suffix}")
    return str(tmp_path / CORPUS)
