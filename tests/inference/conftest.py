"""Shared helpers for inference tests: a tiny model and a tiny character tokenizer."""

from __future__ import annotations

import pytest
import torch

from megatron.model import ModelSpec, build_model
from megatron.parallel import ProcessGroups

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?"


class TinyCharTokenizer:
    """Id 0 is end-of-document; characters of ``ALPHABET`` are ids 1..31 (vocab 32)."""

    eod = 0
    pad = None
    vocab_size = len(ALPHABET) + 1

    def tokenize(self, text: str) -> list[int]:
        return [ALPHABET.index(c) + 1 for c in text]

    def detokenize(self, ids: list[int]) -> str:
        return "".join(ALPHABET[i - 1] for i in ids if i > 0)


def tiny_spec(**overrides: object) -> ModelSpec:
    """2 layers, hidden 32, 4 heads, rotary, 64 padded vocab rows, 32 positions.

    Weights are drawn with std 0.2 (not 0.02) so next-token logits are well separated and
    greedy choices do not hinge on rounding."""
    fields: dict[str, object] = dict(hidden_size=32, num_layers=2, num_attention_heads=4,
                                     padded_vocab_size=64, seq_length=32, pos_emb="rotary",
                                     init_method_std=0.2)
    fields.update(overrides)
    return ModelSpec(**fields)


def tiny_model(spec: ModelSpec | None = None, seed: int = 7) -> torch.nn.Module:
    model, _ = build_model(spec or tiny_spec(), ProcessGroups.single(), pipe_parallel_size=0,
                           seed=seed)
    return model.eval()


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)  # the test machine is small and shared
