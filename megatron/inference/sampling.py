"""Next-token selection: greedy, temperature, top-k and top-p (nucleus) sampling.

The rules follow GPT-NeoX: when temperature, top_k and top_p are all 0 the next token is the
argmax (greedy); otherwise the logits are divided by the temperature (when it is > 0), the
top-k / top-p filters replace excluded logits with -inf, and a token is drawn from the
softmax. Top-p keeps the most likely tokens up to and including the first one whose
cumulative probability passes ``top_p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron.inference.errors import InferenceError


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen (GPT-NeoX keys ``temperature``, ``top_k``, ``top_p``)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InferenceError(f"temperature = {self.temperature} must be >= 0")
        if self.top_k < 0:
            raise InferenceError(f"top_k = {self.top_k} must be >= 0 (0 disables it)")
        if not 0.0 <= self.top_p <= 1.0:
            raise InferenceError(f"top_p = {self.top_p} must lie in [0, 1] (0 disables it)")

    @property
    def greedy(self) -> bool:
        """GPT-NeoX's rule: all three settings at 0 means argmax decoding."""
        return self.temperature == 0 and self.top_k == 0 and self.top_p == 0


def filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf; ``[b, V] -> [b, V]``."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [b, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest most-likely prefix whose probability passes ``top_p``; ``[b, V]``.

    A token is removed when the probability mass of the tokens ranked above it already
    exceeds ``top_p``, so the most likely token always stays.
    """
    if top_p <= 0 or top_p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    mass_before = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    mass_before = torch.cat([torch.zeros_like(mass_before[..., :1]), mass_before[..., :-1]], -1)
    remove_sorted = mass_before > top_p
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_next(logits: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose one token per row from ``logits [b, V]``; returns int64 ``[b]``."""
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if params.temperature > 0:
        logits = logits / params.temperature
    logits = filter_top_p(filter_top_k(logits, params.top_k), params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).view(-1)
