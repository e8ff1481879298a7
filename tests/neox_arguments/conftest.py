"""Shared helpers for config tests: a minimal valid model and a YAML writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from megatron.neox_arguments import Resources

MINIMAL: dict[str, Any] = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "seq_length": 64,
    "max_position_embeddings": 64,
    "train_micro_batch_size_per_gpu": 2,
}

ONE_CPU = Resources(num_nodes=1, gpus_per_node=1, has_cuda=False)
EIGHT_GPUS = Resources(num_nodes=1, gpus_per_node=8, has_cuda=True)


@pytest.fixture
def write(tmp_path: Path):
    """write(name, text) -> path of a new file under tmp_path."""

    def _write(name: str, text: str) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    return _write


def minimal_yaml(**extra: Any) -> str:
    """MINIMAL (plus extra keys) as YAML text, one key per line."""
    import json

    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in {**MINIMAL, **extra}.items()) + "\n"
