"""The model as generation sees it: a ``Decoder`` that turns token ids into next-token logits.

Generation and scoring only talk to this small interface, so a KV-cached decoder can replace
the recomputing one without touching the sampling loop::

    decoder.logits(tokens [b, s])  -> float32 logits [b, s, V]   (every position)
    decoder.step(tokens [b, T], t) -> float32 logits [b, V]      (predicting position t)
    decoder.reset()                -> forget cached state before a new batch

``step`` is always called with the whole (right-padded) token buffer and the position to
fill; positions before ``t`` never change between calls within one batch, which is what a
cache needs. ``RecomputeDecoder`` runs the full forward over ``tokens[:, :t]`` each step
(GPT-NeoX's ``recompute: true``). Logits cover the full vocabulary on every tensor-parallel
rank (the ranks' blocks are gathered) and the padding rows of the vocabulary beyond the
tokenizer's size are -inf, so they can never be sampled.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from megatron.parallel.groups import Group
from megatron.parallel.mappings import gather_from_tp


class Decoder(Protocol):
    """What generation needs from a model (see the module docstring)."""

    def logits(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor: ...

    def reset(self) -> None: ...


class RecomputeDecoder:
    """Full forward pass per step over a plain (non-pipelined) model.

    Args:
        model: ``(tokens, position_ids) -> logits [b, s, V/tp]`` (e.g. ``GPTModel``).
        tp: the tensor-parallel group the model was built with.
        vocab_size: the tokenizer's vocabulary size; logits past it are set to -inf.
    """

    def __init__(self, model: nn.Module, tp: Group, vocab_size: int) -> None:
        self.model, self.tp, self.vocab_size = model, tp, vocab_size

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        b, s = tokens.shape
        position_ids = torch.arange(s, device=tokens.device).expand(b, s)
        out = self.model((tokens, position_ids))  # [b, s, V/tp]
        out = gather_from_tp(out, self.tp).float()  # [b, s, V]
        if out.shape[-1] > self.vocab_size:
            out[..., self.vocab_size :] = float("-inf")
        return out

    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        return self.logits(tokens[:, :t])[:, -1]  # [b, V]

    def reset(self) -> None:
        """Nothing is cached between steps."""
