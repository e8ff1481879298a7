"""The transformer block (``LAYER_TYPES``) and ``build_block``, the one place that picks
a block's submodules from the spec.

Residual math, chosen once at construction::

    sequential (pre-norm, default)          parallel (gpt_j_residual)
    x ──┬─────────────────┐                 x ──┬──────────────────────────┐
        └ norm1 ─ attn ─ drop ─(+)          ├ norm1 ─ attn ─ drop ────────(+)
    x'──┬─────────────────┐                 └ norm2 ─ mlp  ─ drop ────────(+)
        └ norm2 ─ mlp  ─ drop ─(+)          (gpt_j_tied: norm2 is norm1)

Row-parallel outputs are all-reduced inside attention and the MLP and their biases are added
once, so the parallel residual adds each bias exactly once at any tensor-parallel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from megatron.model.attention import SelfAttention
from megatron.model.init import initialize_layer
from megatron.model.kv_cache import LayerCache
from megatron.model.mlp import MLP
from megatron.model.norms import build_norm
from megatron.model.registry import Registry
from megatron.model.sharding import apply_replicated
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import Group
from megatron.parallel.random import RNGTracker

LAYER_TYPES: Registry[type[nn.Module]] = Registry("layer type")


@dataclass
class BlockParts:
    """The built submodules of one block (``post_attention_layernorm`` None when tied)."""

    input_layernorm: nn.Module
    attention: nn.Module
    post_attention_layernorm: nn.Module | None
    mlp: nn.Module


def build_block(spec: ModelSpec, layer: int, tp: Group,
                rng: RNGTracker | None = None) -> BlockParts:
    """Select and build the submodules of block ``layer`` (0-based) from the spec."""

    def norm() -> nn.Module:
        return build_norm(spec.norm, spec.hidden_size, spec.norm_eps, spec.use_bias_in_norms)

    tied = spec.gpt_j_residual and spec.gpt_j_tied
    return BlockParts(input_layernorm=norm(), attention=SelfAttention(spec, layer, tp, rng),
                      post_attention_layernorm=None if tied else norm(), mlp=MLP(spec, tp))


@LAYER_TYPES.register("transformer")
class TransformerLayer(nn.Module):
    """One pre-norm transformer block, ``[b, s, h] -> [b, s, h]`` (GPT-NeoX layer ``2 + i``).

    Args:
        spec: the model description.
        tp: tensor-parallel group.
        index: GPT-NeoX layer index (block ``i`` is ``2 + i``); names its init seeds.
        seed: run seed for layout-independent initialisation.
        rng: tensor-parallel RNG streams; attention dropout forks the model-parallel stream
            so each rank's heads get their own masks (None: the global generator).
    """

    def __init__(self, spec: ModelSpec, tp: Group, index: int, seed: int,
                 rng: RNGTracker | None = None) -> None:
        super().__init__()
        parts = build_block(spec, index - 2, tp, rng)
        self.input_layernorm = parts.input_layernorm
        self.attention = parts.attention
        if parts.post_attention_layernorm is not None:
            self.post_attention_layernorm = parts.post_attention_layernorm
        self.mlp = parts.mlp
        self.dropout = nn.Dropout(spec.hidden_dropout)
        self.parallel_residual = spec.gpt_j_residual
        self.tp, self.sp = tp, spec.sequence_parallel
        initialize_layer(self, index, spec, seed, tp)

    def _norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # Under sequence parallelism each rank normalises its own slice of the sequence.
        return apply_replicated(norm, x, self.tp, self.sp)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """``[b, s, h] -> [b, s, h]`` (``[b, s/tp, h]`` shards with sequence parallelism);
        ``cache`` is this block's KV cache during incremental decoding (``kv_cache.py``)."""
        if self.parallel_residual:
            h1 = self._norm(self.input_layernorm, x)
            norm2 = getattr(self, "post_attention_layernorm", None)
            h2 = h1 if norm2 is None else self._norm(norm2, x)
            return x + self.dropout(self.attention(h1, cache)) + self.dropout(self.mlp(h2))
        x = x + self.dropout(self.attention(self._norm(self.input_layernorm, x), cache))
        return x + self.dropout(self.mlp(self._norm(self.post_attention_layernorm, x)))
