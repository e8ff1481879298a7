"""The model as generation sees it: a ``Decoder`` that turns token ids into next-token logits.

Generation and scoring only talk to this small interface, so a KV-cached decoder can replace
the recomputing one without touching the sampling loop::

    decoder.logits(tokens [b, s])  -> float32 logits [b, s, V]   (every position)
    decoder.step(tokens [b, T], t) -> float32 logits [b, V]      (predicting position t)
    decoder.reset()                -> forget cached state before a new batch

``step`` is always called with the whole (right-padded) token buffer and the position to
fill; positions before ``t`` never change between calls within one batch, which is what a
cache needs. ``RecomputeDecoder`` runs the full forward over ``tokens[:, :t]`` each step
(GPT-NeoX's ``recompute: true``); ``CachedDecoder`` keeps the model's ``KVCache`` and runs
only the positions it has not seen (the prompt block first, then one token per step).
Logits cover the full vocabulary on every tensor-parallel rank (the ranks' blocks are
gathered) and the padding rows of the vocabulary beyond the tokenizer's size are -inf, so
they can never be sampled.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from megatron.model.kv_cache import KVCache
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
        return self._full_vocab(self.model((tokens, position_ids)))

    def _full_vocab(self, out: torch.Tensor) -> torch.Tensor:
        """``[b, s, V/tp]`` -> float32 ``[b, s, V]``, padding rows of the vocabulary -inf."""
        out = gather_from_tp(out, self.tp).float()
        if out.shape[-1] > self.vocab_size:
            out[..., self.vocab_size :] = float("-inf")
        return out

    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        return self.logits(tokens[:, :t])[:, -1]  # [b, V]

    def reset(self) -> None:
        """Nothing is cached between steps."""


class CachedDecoder(RecomputeDecoder):
    """Incremental decoding with the model's ``KVCache`` (``megatron/model/kv_cache.py``).

    The cache is allocated for the whole token buffer on the first step after ``reset``;
    each step feeds ``tokens[:, cache.length:t]`` at positions ``cache.length .. t-1``.
    ``logits`` (whole sequences, used for scoring) does not touch the cache.
    """

    def __init__(self, model: nn.Module, tp: Group, vocab_size: int) -> None:
        super().__init__(model, tp, vocab_size)
        self.cache: KVCache | None = None

    def reset(self) -> None:
        self.cache = None

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        b, total = tokens.shape
        if self.cache is None or self.cache.length >= t or self.cache.batch_size != b:
            self.cache = KVCache.allocate(self.model, batch_size=b, max_length=total)
        start = self.cache.length
        position_ids = torch.arange(start, t, device=tokens.device).expand(b, t - start)
        out = self.model((tokens[:, start:t], position_ids), cache=self.cache)  # [b, s, V/tp]
        return self._full_vocab(out[:, -1:])[:, -1]  # [b, V]
