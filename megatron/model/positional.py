"""Positional encodings (``POSITIONAL``), each implementing three hooks.

- ``embed(x, position_ids)`` at the input (learned, sinusoidal);
- ``rotate(q, k)`` on queries and keys (rotary);
- ``score_bias(sq, sk)`` added to attention scores (ALiBi, T5 relative buckets).

Every hook defaults to the identity, so attention calls all three and never checks which
kind it holds. ``stage`` says where an instance lives: ``"input"`` encodings are owned by the
embedding layer (as ``position_embeddings``), ``"attention"`` ones by each attention layer.
q and k are ``[b, s, heads, head_dim]``; score biases are ``[1, local_heads, sq, sk]``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from megatron.model.registry import Registry
from megatron.model.sharding import per_rank
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import Group
from megatron.parallel.layers import set_tp_attributes

POSITIONAL: Registry[type[Positional]] = Registry("pos_emb")


class Positional(nn.Module):
    """Base class: all three hooks are the identity."""

    stage: ClassVar[str] = "attention"

    def __init__(self, spec: ModelSpec, tp: Group) -> None:
        super().__init__()

    def embed(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Add position information to the token embeddings ``[b, s, h]``."""
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate queries and keys ``[b, s, heads, d]``."""
        return q, k

    def score_bias(self, sq: int, sk: int,
                   device: torch.device | None = None) -> torch.Tensor | None:
        """Additive score bias ``[1, local_heads, sq, sk]`` on ``device``, or None."""
        return None


POSITIONAL.register("none")(Positional)


@POSITIONAL.register("learned")
class LearnedPositions(Positional):
    """A learned table ``weight [max_position_embeddings, h]`` indexed by position ids."""

    stage = "input"

    def __init__(self, spec: ModelSpec, tp: Group) -> None:
        super().__init__(spec, tp)
        self.weight = nn.Parameter(torch.zeros(spec.max_positions, spec.hidden_size))
        set_tp_attributes(self.weight, None)

    def embed(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.embedding(position_ids, self.weight)


@POSITIONAL.register("sinusoidal")
class SinusoidalPositions(Positional):
    """Fixed ``[sin(p * f), cos(p * f)]`` features added at the input (no parameters)."""

    stage = "input"

    def __init__(self, spec: ModelSpec, tp: Group) -> None:
        super().__init__(spec, tp)
        self.dim = spec.hidden_size

    def embed(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # fp32 tables even when the model runs in fp16/bf16.
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.dim, 2, device=x.device).float()
                                    / self.dim))
        t = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        angles = torch.outer(t, inv_freq)  # [s, h/2]
        table = torch.cat((angles.sin(), angles.cos()), dim=-1)  # [s, h]
        return x + table.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension (GPT-NeoX's rotary layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@POSITIONAL.register("rotary")
class RotaryPositions(Positional):
    """Rotary embedding on the first ``rotary_dims`` channels of each head (rotate-half).

    Frequencies ``base^(-2i/rotary_dims)``; channel ``i`` and ``i + rotary_dims/2`` form a
    rotating pair. Positions are ``0..s-1`` as in GPT-NeoX training.
    """

    def __init__(self, spec: ModelSpec, tp: Group) -> None:
        super().__init__(spec, tp)
        self.dims, self.base = spec.rotary_dims, float(spec.rotary_emb_base)

    def cos_sin(self, s: int, dtype: torch.dtype,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and ``sin`` tables ``[1, s, 1, rotary_dims]``, computed in fp32 (no buffer,
        so casting the model to fp16/bf16 cannot degrade the frequencies)."""
        exponents = torch.arange(0, self.dims, 2, device=device).float() / self.dims
        inv_freq = 1.0 / (self.base**exponents)
        t = torch.arange(s, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [s, rotary_dims/2]
        emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]  # [1, s, 1, rotary_dims]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _rotate_one(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., : self.dims], x[..., self.dims :]
        return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.cos_sin(q.shape[1], q.dtype, q.device)
        return self._rotate_one(q, cos, sin), self._rotate_one(k, cos, sin)


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes: ``2^(-8i/n)`` for a power of two ``n``; otherwise the slopes of the
    nearest lower power of two followed by every other slope of twice that."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]


@POSITIONAL.register("alibi")
class AlibiPositions(Positional):
    """Linear distance penalty ``-slope_h * (i - j)`` on the scores (this rank's heads)."""

    def __init__(self, spec: ModelSpec, tp: Group) -> None:
        super().__init__(spec, tp)
        local = per_rank(spec.num_attention_heads, tp, "num_attention_heads")
        self.slopes = alibi_slopes(spec.num_attention_heads)[tp.rank * local:][:local]

    def score_bias(self, sq: int, sk: int, device: torch.device | None = None) -> torch.Tensor:
        slopes = torch.tensor(self.slopes, device=device)  # fp32, whatever the model's dtype
        q_pos = torch.arange(sk - sq, sk, device=device)[:, None]
        k_pos = torch.arange(sk, device=device)[None, :]
        distance = (q_pos - k_pos).clamp(min=0).float()  # [sq, sk]; future is masked anyway
        return -(slopes[:, None, None] * distance)[None]


def t5_buckets(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Causal T5 buckets of ``query - key`` distances: exact below ``num_buckets // 2``,
    then logarithmic up to ``max_distance``."""
    n = relative.clamp(min=0)
    exact = num_buckets // 2
    safe = n.float().clamp(min=1)
    large = exact + (torch.log(safe / exact) / math.log(max_distance / exact)
                     * (num_buckets - exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return torch.where(n < exact, n, large)


@POSITIONAL.register("rpe")
class RelativeBucketPositions(Positional):
    """T5-style learned bias per (bucket, head), scaled by ``sqrt(head_dim)`` as GPT-NeoX.

    ``weight [rpe_num_buckets, heads]`` is split over heads across tensor-parallel ranks.
    """

    def __init__(self, spec: ModelSpec, tp: Group) -> None:
        super().__init__(spec, tp)
        self.num_buckets, self.max_distance = spec.rpe_num_buckets, spec.rpe_max_distance
        self.scale = math.sqrt(spec.head_dim)
        local_heads = spec.num_attention_heads // tp.size
        self.weight = nn.Parameter(torch.zeros(spec.rpe_num_buckets, local_heads))
        set_tp_attributes(self.weight, 1)

    def score_bias(self, sq: int, sk: int, device: torch.device | None = None) -> torch.Tensor:
        q_pos = torch.arange(sk - sq, sk, device=self.weight.device)[:, None]
        k_pos = torch.arange(sk, device=self.weight.device)[None, :]
        buckets = t5_buckets(q_pos - k_pos, self.num_buckets, self.max_distance)
        values = nn.functional.embedding(buckets, self.weight)  # [sq, sk, heads]
        return (values.permute(2, 0, 1) * self.scale)[None]
