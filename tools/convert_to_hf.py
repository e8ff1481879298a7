"""Export one of our checkpoints as a HuggingFace ``transformers`` model folder.

    python tools/convert_to_hf.py --input_dir CKPT/global_stepN --output_dir OUT \
        [--config_file CFG.yml ...] [--precision auto|fp32|bf16|fp16] [--architecture neox|llama]

GPT-NeoX architectures (LayerNorm, ungated MLP, rotary) become ``GPTNeoXForCausalLM``;
LLaMA-style ones (RMSNorm, gated MLP, no parallel residual, GQA allowed) ``LlamaForCausalLM``.
Without ``--architecture`` the MLP decides (gated: llama). Anything the HF class cannot compute
exactly is refused with the option that prevents it. Without ``--config_file`` the run's YAML
files are read from ``CKPT/global_stepN/configs/``. The tokenizer is saved beside the model
when the config names one HF can represent. Exit codes: 0 done, 2 usage or unsupported model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

try:
    import megatron  # noqa: F401
except ImportError:  # run as `python tools/convert_to_hf.py`: put the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron.model import ModelSpec
from megatron.model.checkpoint_io import (
    CheckpointFormatError,
    check_state_dict,
    detect_layout,
    load_rank_state_dicts,
    merge_shards,
    resolve_checkpoint_dir,
)

LOG = logging.getLogger("convert_to_hf")
StateDict = dict[str, torch.Tensor]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Our activation -> HF ``hidden_act`` that computes the same function (exact GELU, not tanh).
PLAIN_ACTS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu", "mish": "mish"}
# Gated units: ours is value * act(gate), LLaMA's down(act(gate_proj) * up_proj).
GATED_ACTS = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}
LAYERNORMS = ("layernorm", "te_layernorm", "non_parametric_layernorm")
RMSNORMS = ("rmsnorm", "te_rmsnorm")


class ExportError(Exception):
    """The checkpoint's architecture has no exact HuggingFace equivalent, or bad input."""


def common_problems(spec: ModelSpec) -> list[str]:
    """Options neither target class can represent."""
    problems = []
    if spec.pos_emb != "rotary":
        problems.append(f"pos_emb = '{spec.pos_emb}' (HF GPT-NeoX and LLaMA only do rotary)")
    if spec.use_qk_layernorm:
        problems.append("use_qk_layernorm = true (no query/key norm in the HF classes)")
    if any(kind == "local" for kind in spec.attention_config) or spec.sliding_window_width:
        problems.append("local/sliding-window attention (attention_config 'local' or "
                        "sliding_window_width): the HF classes attend globally")
    return problems


def neox_problems(spec: ModelSpec) -> list[str]:
    problems = common_problems(spec)
    if spec.gqa:
        problems.append(f"num_kv_heads = {spec.num_kv_heads} (GPTNeoX has no grouped-query "
                        "attention; use --architecture llama)")
    if spec.activation not in PLAIN_ACTS:
        problems.append(f"activation = '{spec.activation}' (GPTNeoX supports "
                        f"{sorted(PLAIN_ACTS)}; gated units need --architecture llama)")
    if spec.norm not in LAYERNORMS:
        problems.append(f"norm = '{spec.norm}' (GPTNeoX uses LayerNorm: {list(LAYERNORMS)})")
    return problems


def llama_problems(spec: ModelSpec) -> list[str]:
    problems = common_problems(spec)
    if spec.pos_emb == "rotary" and spec.rotary_pct < 1:
        problems.append(f"rotary_pct = {spec.rotary_pct} (LLaMA rotates whole heads)")
    if spec.activation not in GATED_ACTS:
        problems.append(f"activation = '{spec.activation}' (LLaMA's MLP is gated: "
                        f"{sorted(GATED_ACTS)})")
    if spec.norm not in RMSNORMS:
        problems.append(f"norm = '{spec.norm}' (LLaMA uses RMSNorm: {list(RMSNORMS)})")
    if spec.gpt_j_residual:
        problems.append("gpt_j_residual = true (LLaMA blocks are sequential)")
    return problems


def _layernorm(full: StateDict, prefix: str, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """HF LayerNorm weight and bias; absent ones are the identity (ones, zeros), exactly."""
    ones, zeros = torch.ones(spec.hidden_size), torch.zeros(spec.hidden_size)
    weight = full.get(f"{prefix}.weight", ones)
    return {"weight": weight, "bias": full.get(f"{prefix}.bias", zeros.to(weight.dtype))}


def _rmsnorm(full: StateDict, prefix: str) -> torch.Tensor:
    """The RMSNorm gain (``scale`` for rmsnorm, ``weight`` for te_rmsnorm)."""
    offset = full.get(f"{prefix}.offset")
    if offset is not None and bool(offset.ne(0).any()):
        raise ExportError(f"{prefix}.offset is non-zero (use_bias_in_norms with rmsnorm); "
                          "LLaMA's RMSNorm has no shift")
    return full.get(f"{prefix}.scale", full.get(f"{prefix}.weight"))


def _bias_or_zeros(full: StateDict, name: str, rows: int, like: torch.Tensor) -> torch.Tensor:
    return full.get(name, torch.zeros(rows, dtype=like.dtype))


def neox_weights(full: StateDict, spec: ModelSpec) -> StateDict:
    """Our names -> ``GPTNeoXForCausalLM`` names (QKV rows are grouped per head in both)."""
    n = spec.num_layers
    out = {"gpt_neox.embed_in.weight": full["sequential.0.word_embeddings.weight"]}
    for i in range(n):
        src, dst = f"sequential.{i + 2}.", f"gpt_neox.layers.{i}."
        tied = spec.gpt_j_residual and spec.gpt_j_tied  # one norm feeds both branches
        norm2 = "input_layernorm" if tied else "post_attention_layernorm"
        for ours, theirs in (("input_layernorm", "input_layernorm"),
                             (norm2, "post_attention_layernorm")):
            for kind, t in _layernorm(full, src + ours, spec).items():
                out[f"{dst}{theirs}.{kind}"] = t
        for ours, theirs in (("attention.query_key_value", "attention.query_key_value"),
                             ("attention.dense", "attention.dense")):
            out[f"{dst}{theirs}.weight"] = full[f"{src}{ours}.weight"]
            if spec.use_bias_in_attn_linear:
                out[f"{dst}{theirs}.bias"] = full[f"{src}{ours}.bias"]
        # HF's MLP always has biases; a bias-free MLP is the same function with zero biases.
        for ours, theirs in (("mlp.linear1", "mlp.dense_h_to_4h"),
                             ("mlp.linear2", "mlp.dense_4h_to_h")):
            weight = full[f"{src}{ours}.weight"]
            out[f"{dst}{theirs}.weight"] = weight
            out[f"{dst}{theirs}.bias"] = _bias_or_zeros(full, f"{src}{ours}.bias",
                                                        weight.shape[0], weight)
    for kind, t in _layernorm(full, f"sequential.{n + 3}.norm", spec).items():
        out[f"gpt_neox.final_layer_norm.{kind}"] = t
    if not spec.tie_word_embeddings:
        out["embed_out.weight"] = full[f"sequential.{n + 4}.final_linear.weight"]
    return out


def split_qkv(qkv: torch.Tensor, spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    """Fused QKV rows -> (q, k, v): per-head groups without GQA, [Q; K; V] with it."""
    d = spec.head_dim
    if not spec.gqa:
        grouped = qkv.reshape(spec.num_attention_heads, 3, d, *qkv.shape[1:])
        return tuple(grouped[:, j].reshape(-1, *qkv.shape[1:]) for j in range(3))
    sizes = [spec.num_attention_heads * d, spec.kv_heads * d, spec.kv_heads * d]
    return tuple(qkv.split(sizes, dim=0))


def llama_weights(full: StateDict, spec: ModelSpec) -> StateDict:
    """Our names -> ``LlamaForCausalLM`` names; linear1 is [value; gate] = [up; gate]."""
    n = spec.num_layers
    out = {"model.embed_tokens.weight": full["sequential.0.word_embeddings.weight"]}
    kinds = ["weight"] + (["bias"] if spec.use_bias_in_attn_linear else [])
    mlp_kinds = ["weight"] + (["bias"] if spec.use_bias_in_mlp else [])
    for i in range(n):
        src, dst = f"sequential.{i + 2}.", f"model.layers.{i}."
        out[f"{dst}input_layernorm.weight"] = _rmsnorm(full, src + "input_layernorm")
        out[f"{dst}post_attention_layernorm.weight"] = _rmsnorm(
            full, src + "post_attention_layernorm")
        for kind in kinds:
            q, k, v = split_qkv(full[f"{src}attention.query_key_value.{kind}"], spec)
            out.update({f"{dst}self_attn.q_proj.{kind}": q, f"{dst}self_attn.k_proj.{kind}": k,
                        f"{dst}self_attn.v_proj.{kind}": v,
                        f"{dst}self_attn.o_proj.{kind}": full[f"{src}attention.dense.{kind}"]})
        for kind in mlp_kinds:
            up, gate = full[f"{src}mlp.linear1.{kind}"].chunk(2, dim=0)
            out.update({f"{dst}mlp.up_proj.{kind}": up, f"{dst}mlp.gate_proj.{kind}": gate,
                        f"{dst}mlp.down_proj.{kind}": full[f"{src}mlp.linear2.{kind}"]})
    out["model.norm.weight"] = _rmsnorm(full, f"sequential.{n + 3}.norm")
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = full[f"sequential.{n + 4}.final_linear.weight"]
    return out


def neox_config(spec: ModelSpec, extra: dict[str, Any]) -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=spec.padded_vocab_size, hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_attention_heads,
        intermediate_size=spec.mlp_width, hidden_act=PLAIN_ACTS[spec.activation],
        rotary_pct=spec.rotary_pct, rotary_emb_base=spec.rotary_emb_base,
        max_position_embeddings=spec.max_positions, layer_norm_eps=spec.norm_eps,
        use_parallel_residual=spec.gpt_j_residual, tie_word_embeddings=spec.tie_word_embeddings,
        attention_bias=spec.use_bias_in_attn_linear, hidden_dropout=spec.hidden_dropout,
        attention_dropout=spec.attention_dropout, **extra)


def llama_config(spec: ModelSpec, extra: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=spec.padded_vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.mlp_width, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim, hidden_act=GATED_ACTS[spec.activation],
        max_position_embeddings=spec.max_positions, rms_norm_eps=spec.norm_eps,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(spec.rotary_emb_base)},
        attention_bias=spec.use_bias_in_attn_linear, mlp_bias=spec.use_bias_in_mlp,
        attention_dropout=spec.attention_dropout, **extra)


@dataclass(frozen=True)
class Architecture:
    """One HF target: what it cannot represent, its config, and the weight renaming."""

    problems: Callable[[ModelSpec], list[str]]
    config: Callable[[ModelSpec, dict[str, Any]], Any]
    weights: Callable[[StateDict, ModelSpec], StateDict]


ARCHITECTURES = {"neox": Architecture(neox_problems, neox_config, neox_weights),
                 "llama": Architecture(llama_problems, llama_config, llama_weights)}
