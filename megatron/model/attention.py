"""Causal self-attention with MHA, GQA and MQA, tensor-parallel over heads.

The fused ``query_key_value`` rows follow GPT-NeoX:

- multi-head (``kv_heads == heads``): rows grouped per head ``[q_h, k_h, v_h]`` for each
  head ``h``, so each tensor-parallel rank holds a contiguous block of heads;
- GQA/MQA: on each rank all of its Q rows, then its K rows, then its V rows; the full
  tensor is ``[Q, K, V]`` and every section is split across ranks (``tp_sections``).

Query head ``i`` uses key/value head ``i // (heads / kv_heads)``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from megatron.model.init import mark_sections
from megatron.model.kernels import ATTENTION_KERNELS
from megatron.model.kv_cache import LayerCache
from megatron.model.norms import build_norm
from megatron.model.positional import POSITIONAL, Positional
from megatron.model.sharding import apply_replicated, no_init, per_rank, replicated
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import Group
from megatron.parallel.layers import ColumnParallelLinear, RowParallelLinear, set_tp_attributes
from megatron.parallel.random import RNGTracker

DEFAULT_LOCAL_WINDOW = 256
"""Window of 'local' layers when ``sliding_window_width`` is not set."""


def kernel_and_window(spec: ModelSpec, layer: int) -> tuple[str, int | None]:
    """Which kernel block ``layer`` uses and its sliding window (None: full causal)."""
    kind = spec.layer_attention(layer)
    if kind == "flash":
        return "flash", spec.sliding_window_width
    if kind == "local":
        return spec.attention_kernel, spec.sliding_window_width or DEFAULT_LOCAL_WINDOW
    return spec.attention_kernel, spec.sliding_window_width


def _own_storage(v: torch.Tensor, mixed: torch.Tensor, q: torch.Tensor,
                 k: torch.Tensor) -> torch.Tensor:
    """``v`` copied out of ``mixed`` when it is the last view of it that backward would keep.

    Why: the kernel saves q, k and v for backward. Once rotary (or the qk norm) has made q
    and k tensors of their own, a ``v`` that is still a view of the fused QKV output keeps
    all of that output alive, two thirds of it unused: 8 MB per layer for 2048 tokens of
    hidden 512 in fp32, 10-20% of a layer's activations. The copy costs a pass over ``v``
    alone (~0.5 ms there). Without a recorded graph nothing is saved and nothing is copied.
    """
    if not mixed.requires_grad or not torch.is_grad_enabled():
        return v
    base = mixed.untyped_storage().data_ptr()
    if v.untyped_storage().data_ptr() != base:
        return v  # GQA's repeat or the KV cache already made it a tensor of its own
    if base in (q.untyped_storage().data_ptr(), k.untyped_storage().data_ptr()):
        return v  # q or k keeps the fused output alive anyway
    return v.contiguous()


class SelfAttention(nn.Module):
    """``[b, s, h] -> [b, s, h]`` causal self-attention over this rank's heads."""

    def __init__(self, spec: ModelSpec, layer: int, tp: Group,
                 rng: RNGTracker | None = None) -> None:
        super().__init__()
        self.rng = rng  # dropout of this rank's heads draws from the model-parallel stream
        self.tp, self.head_dim, self.gqa = tp, spec.head_dim, spec.gqa
        self.heads = per_rank(spec.num_attention_heads, tp, "num_attention_heads")
        self.kv_heads = per_rank(spec.kv_heads, tp, "num_kv_heads")
        d, h = spec.head_dim, spec.hidden_size
        qkv_out = (spec.num_attention_heads + 2 * spec.kv_heads) * d
        bias = spec.use_bias_in_attn_linear
        self.sp = spec.sequence_parallel
        self.query_key_value = ColumnParallelLinear(h, qkv_out, tp, bias=bias,
                                                    sequence_parallel=self.sp,
                                                    init_method=no_init)
        if self.gqa:
            sections = [spec.num_attention_heads * d, spec.kv_heads * d, spec.kv_heads * d]
            for p in self.query_key_value.parameters():
                mark_sections(p, sections)
        self.dense = RowParallelLinear(h, h, tp, bias=bias, input_is_parallel=True,
                                       sequence_parallel=self.sp, skip_bias_add=True,
                                       init_method=no_init)
        if self.dense.bias is not None:  # its gradient is summed in forward's ``replicated``
            set_tp_attributes(self.dense.bias, None, sequence_parallel=False)
        pos_cls = POSITIONAL.get(spec.pos_emb)
        self.positional = pos_cls(spec, tp) if pos_cls.stage == "attention" else \
            Positional(spec, tp)
        self.qk_layernorm = (build_norm(spec.norm, d, spec.norm_eps, spec.use_bias_in_norms)
                             if spec.use_qk_layernorm else None)
        kernel_name, self.window = kernel_and_window(spec, layer)
        self.kernel = ATTENTION_KERNELS.get(kernel_name)
        # GPT-NeoX numbers layers from 0 here and uses max(1, layer_number).
        self.coeff = float(max(1, layer)) if spec.apply_query_key_layer_scaling else 1.0
        self.scale = spec.attention_scale or 1.0 / math.sqrt(spec.head_dim)  # muP: 1/head_dim
        self.softmax_fp32 = spec.attention_softmax_in_fp32 or spec.apply_query_key_layer_scaling
        self.dropout_p = spec.attention_dropout

    def split_qkv(self, mixed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[b, s, qkv/tp] -> q [b, s, nq, d], k and v [b, s, nkv, d]`` (this rank)."""
        b, s, _ = mixed.shape
        d = self.head_dim
        if not self.gqa:
            grouped = mixed.view(b, s, self.heads, 3 * d)  # rows grouped per head
            return grouped.split(d, dim=-1)
        q, k, v = mixed.split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        return (q.view(b, s, self.heads, d), k.view(b, s, self.kv_heads, d),
                v.view(b, s, self.kv_heads, d))

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """``[b, s, h] -> [b, s, h]``; with ``cache``, ``x`` holds only the new positions and
        the queries attend to every cached key as well (``kv_cache.py``)."""
        mixed = self.query_key_value(x)  # [b, s, qkv/tp]; gathers the sequence under SP
        b, s, _ = mixed.shape
        q, k, v = self.split_qkv(mixed)
        if self.qk_layernorm is not None:  # before rotary, as GPT-NeoX
            # Per-head norm over head_dim; it sees only this rank's heads.
            q = apply_replicated(self.qk_layernorm, q, self.tp)
            k = apply_replicated(self.qk_layernorm, k, self.tp)
        if cache is None:
            q, k = self.positional.rotate(q, k)
        else:  # rotate at the step's position ids, then append to the cache
            q, k = cache.rotate(self.positional, q, k)
            k, v = cache.update(k, v)  # [b, sk, nkv, d]: every cached position
        if self.kv_heads != self.heads:  # GQA: each kv head serves a group of query heads
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=2)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=2)
        v = _own_storage(v, mixed, q, k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, nq, s, d] (k, v: sk)
        score_bias = self.positional.score_bias(s, k.shape[2], q.device)
        if cache is not None:
            score_bias = cache.score_bias(score_bias)  # hides left padding
        dropout_p = self.dropout_p if self.training else 0.0
        with self.rng.fork() if self.rng is not None and dropout_p > 0 else nullcontext():
            out = self.kernel(q, k, v, bias=score_bias, causal=True, window=self.window,
                              scale=self.scale, dropout_p=dropout_p,
                              softmax_fp32=self.softmax_fp32, coeff=self.coeff)
        out = out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)  # [b, s, h/tp]
        out, bias = self.dense(out)  # [b, s, h] ([b, s/tp, h] with sequence parallelism)
        return out if bias is None else out + replicated(bias, self.tp, self.sp)
