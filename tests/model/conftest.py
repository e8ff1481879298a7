"""Shared helpers for model tests: tiny specs and inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron.model.spec import ModelSpec


def tiny_spec(**overrides: object) -> ModelSpec:
    """A 2-layer, hidden-32, 4-head model with a 64-token vocabulary."""
    base = ModelSpec(hidden_size=32, num_layers=2, num_attention_heads=4, padded_vocab_size=64,
                     seq_length=16)
    return dataclasses.replace(base, **overrides)


def tiny_inputs(batch: int = 2, seq: int = 16, vocab: int = 64,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, position_ids, labels) drawn from a fixed generator."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    position_ids = torch.arange(seq).expand(batch, seq)
    return tokens, position_ids, labels


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)  # the test machine is small and shared
