"""Batched generation: several prompts decoded together, right-padded.

Prompts of different lengths share one token buffer ``[b, T]``, each written from position 0
and padded on the right. The model is causal and its positions run ``0..s-1``, so the logits
at a row's positions never see that row's padding; every row therefore gets exactly the
tokens it would get alone (for greedy decoding). Decoding starts at the shortest prompt;
rows still inside their prompt keep their own tokens until they reach their end.

A row stops at a stop token (end-of-document, or any of ``stop_tokens``), after
``maximum_tokens`` new tokens, or at ``seq_length``. The stop token is not part of the
returned ids or text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from megatron.inference.decoder import Decoder
from megatron.inference.errors import InferenceError
from megatron.inference.sampling import SamplingParams, sample_next


@dataclass
class GenerationLimits:
    """When a row stops: ``maximum_tokens`` new tokens, ``seq_length``, or a stop token."""

    maximum_tokens: int
    seq_length: int
    stop_tokens: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.maximum_tokens < 1:
            raise InferenceError(f"maximum_tokens = {self.maximum_tokens} must be >= 1")


@dataclass
class GenerationResult:
    """One prompt's completion (the fields GPT-NeoX writes, plus the token ids)."""

    context: str
    text: str
    tokens: list[int]
    length: int
    finished: bool
    """True when a stop token ended the completion (not a length limit)."""
    duration_seconds: float
    message: str | None = None

    def to_json(self) -> dict[str, object]:
        """The JSON-lines record of ``sample_output_file``."""
        return {"context": self.context, "text": self.text, "length": self.length,
                "finished": self.finished, "message": self.message,
                "duration_seconds": self.duration_seconds}


TokenSync = Callable[[torch.Tensor], torch.Tensor]
"""Makes every tensor-parallel rank hold the same sampled tokens (e.g. a broadcast)."""


def generate_tokens(decoder: Decoder, prompts: list[list[int]], limits: GenerationLimits,
                    params: SamplingParams, generator: torch.Generator | None = None,
                    sync: TokenSync | None = None) -> list[tuple[list[int], bool]]:
    """Decode all ``prompts`` together; returns ``(new_token_ids, stopped)`` per prompt."""
    lengths = torch.tensor([len(p) for p in prompts])
    if lengths.min() < 1 or lengths.max() >= limits.seq_length:
        raise InferenceError(f"prompt lengths must lie in [1, seq_length - 1 = "
                             f"{limits.seq_length - 1}]; got {lengths.tolist()}")
    ends = torch.clamp(lengths + limits.maximum_tokens, max=limits.seq_length)
    tokens = torch.zeros(len(prompts), int(ends.max()), dtype=torch.long)  # [b, T]
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
    stop = torch.tensor(sorted(limits.stop_tokens), dtype=torch.long)
    stopped = torch.zeros(len(prompts), dtype=torch.bool)
    decoder.reset()
    for t in range(int(lengths.min()), tokens.shape[1]):
        active = (t >= lengths) & (t < ends) & ~stopped
        nxt = sample_next(decoder.step(tokens, t), params, generator)  # [b]
        nxt = sync(nxt) if sync is not None else nxt
        hit = active & torch.isin(nxt, stop)
        tokens[:, t] = torch.where(active & ~hit, nxt, tokens[:, t])
        stopped |= hit
        ends = torch.where(hit, torch.full_like(ends, t), ends)
        if bool(((ends <= t + 1) | stopped).all()):
            break
    return [(tokens[i, lengths[i] : ends[i]].tolist(), bool(stopped[i]))
            for i in range(len(prompts))]


def batched(items: list, size: int) -> Iterable[list]:
    """Consecutive chunks of at most ``size`` items."""
    if size < 1:
        raise InferenceError(f"batch size = {size} must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TextGenerator:
    """Text in, ``GenerationResult`` out: tokenises, batches, decodes and detokenises.

    Args:
        decoder: the model (see ``decoder.py``).
        tokenizer: ``tokenize``, ``detokenize`` and ``eod``.
        limits: stop rules; the tokenizer's end-of-document is always a stop token.
        params: sampling settings.
        batch_size: prompts decoded together.
        generator: random stream for sampling (the same seed on every tensor-parallel rank).
        sync: makes tensor-parallel ranks agree on sampled tokens.
    """

    def __init__(self, decoder: Decoder, tokenizer: object, limits: GenerationLimits,
                 params: SamplingParams, batch_size: int = 1,
                 generator: torch.Generator | None = None, sync: TokenSync | None = None,
                 ) -> None:
        self.decoder, self.tokenizer, self.params = decoder, tokenizer, params
        self.limits = GenerationLimits(limits.maximum_tokens, limits.seq_length,
                                       limits.stop_tokens | {tokenizer.eod})
        self.batch_size, self.generator, self.sync = batch_size, generator, sync

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids; an empty prompt starts from end-of-document, as in GPT-NeoX."""
        return self.tokenizer.tokenize(prompt) if prompt else [self.tokenizer.eod]

    def generate(self, prompts: list[str]) -> list[GenerationResult]:
        """Complete every prompt, in order, ``batch_size`` prompts at a time."""
        encoded = [self.encode(p) for p in prompts]
        results: list[GenerationResult | None] = [None] * len(prompts)
        fits = [i for i, ids in enumerate(encoded) if len(ids) < self.limits.seq_length]
        for i in set(range(len(prompts))) - set(fits):
            results[i] = GenerationResult(
                prompts[i], "", [], 0, False, 0.0,
                message=f"context has {len(encoded[i])} tokens; at most seq_length - 1 = "
                        f"{self.limits.seq_length - 1} fit")
        for chunk in batched(fits, self.batch_size):
            start = time.perf_counter()
            outs = generate_tokens(self.decoder, [encoded[i] for i in chunk], self.limits,
                                   self.params, self.generator, self.sync)
            elapsed = time.perf_counter() - start
            for i, (ids, stopped) in zip(chunk, outs, strict=True):
                results[i] = GenerationResult(prompts[i], self.tokenizer.detokenize(ids), ids,
                                              len(ids), stopped, elapsed)
        return [r for r in results if r is not None]
