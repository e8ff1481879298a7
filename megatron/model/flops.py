"""Exact parameter and FLOP counts of the model a ``ModelSpec`` describes.

Unlike GPT-NeoX's logging formula (which assumes 4h ungated MLPs, full multi-head attention
and under-counts the output layer), these counts follow the actual layers: GQA, gated MLPs,
``intermediate_size``, biases, norms and the (padded) vocabulary are all included.
"""

from __future__ import annotations

from megatron.model.positional import POSITIONAL
from megatron.model.spec import ModelSpec

# Parameters of one norm over ``dim`` channels, per norm type and use_bias_in_norms.
_NORM_PARAMS = {
    "layernorm": lambda dim, bias: dim * (2 if bias else 1),
    "rmsnorm": lambda dim, bias: dim * (2 if bias else 1),
    "scalenorm": lambda dim, bias: 1,
    "non_parametric_layernorm": lambda dim, bias: 0,
    "te_layernorm": lambda dim, bias: dim * (2 if bias else 1),
    "te_rmsnorm": lambda dim, bias: dim,
}


def _norm_params(spec: ModelSpec, dim: int) -> int:
    return _NORM_PARAMS[spec.norm](dim, spec.use_bias_in_norms)


def _block_matmul_weights(spec: ModelSpec) -> int:
    """Weights of one block's matmuls (QKV, dense, linear1, linear2), no biases."""
    h, d = spec.hidden_size, spec.head_dim
    qkv = h * (spec.num_attention_heads + 2 * spec.kv_heads) * d
    return qkv + h * h + h * spec.linear1_width + spec.mlp_width * h


def _block_params(spec: ModelSpec) -> int:
    h, d = spec.hidden_size, spec.head_dim
    total = _block_matmul_weights(spec)
    if spec.use_bias_in_attn_linear:
        total += (spec.num_attention_heads + 2 * spec.kv_heads) * d + h
    if spec.use_bias_in_mlp:
        total += spec.linear1_width + h
    norms = 1 if (spec.gpt_j_residual and spec.gpt_j_tied) else 2
    total += norms * _norm_params(spec, h)
    if spec.use_qk_layernorm:
        total += _norm_params(spec, d)
    if spec.pos_emb == "rpe":
        total += spec.rpe_num_buckets * spec.num_attention_heads
    return total


def num_parameters(spec: ModelSpec) -> int:
    """Total parameters of the full (unsharded) model, tied embeddings counted once."""
    h, v = spec.hidden_size, spec.padded_vocab_size
    total = v * h + spec.num_layers * _block_params(spec) + _norm_params(spec, h)
    if spec.pos_emb == "learned":
        total += spec.max_positions * h
    if not spec.tie_word_embeddings:
        total += v * h
    POSITIONAL.get(spec.pos_emb)  # an unknown encoding is an error, not zero parameters
    return total


def forward_flops_per_token(spec: ModelSpec, seq_length: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one token's forward pass.

    Blocks: 2 x matmul weights, plus attention scores and weighted sum, each ``2 * s * h``
    (every query against all ``s`` keys, as GPT-NeoX and Megatron count it). Output layer:
    ``2 * h * V``. Embedding lookups, norms and elementwise ops are not counted.
    """
    h = spec.hidden_size
    per_block = 2 * _block_matmul_weights(spec) + 4 * seq_length * h
    return spec.num_layers * per_block + 2 * h * spec.padded_vocab_size


def flops_per_iteration(spec: ModelSpec, batch_size: int, seq_length: int,
                        activation_checkpointing: bool = False) -> int:
    """Model FLOPs of one optimizer step over ``batch_size`` sequences (global batch).

    Backward costs twice the forward (factor 3); activation checkpointing recomputes the
    forward once more (factor 4), giving hardware FLOPs as GPT-NeoX reports them.
    """
    factor = 4 if activation_checkpointing else 3
    return factor * batch_size * seq_length * forward_flops_per_token(spec, seq_length)
