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
NEUTRAL_BATCH = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}


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
    mup_scaled = (spec.attention_scale is not None or spec.embedding_mult != 1.0
                  or spec.output_mult != 1.0)
    if mup_scaled:
        problems.append("use_mup = true (muP's attention, embedding and output multipliers "
                        "have no place in the HF classes)")
    return problems


def neox_problems(spec: ModelSpec) -> list[str]:
    """Why ``GPTNeoXForCausalLM`` cannot compute this model exactly (empty: it can)."""
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
    """Why ``LlamaForCausalLM`` cannot compute this model exactly (empty: it can)."""
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
    """``GPTNeoXConfig`` (transformers 5 stores rotary_pct/base in ``rope_parameters``)."""
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
    """``LlamaConfig`` with plain (unscaled) rotary over whole heads."""
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


def _hf_tokenizer_json(args: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=args.vocab_file)


def _gpt2_bpe(args: Any) -> Any:
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(vocab_file=args.vocab_file, merges_file=args.merge_file)


# tokenizer_type (lower case) -> HF tokenizer built from the same local files.
TOKENIZERS: dict[str, Callable[[Any], Any]] = {"hftokenizer": _hf_tokenizer_json,
                                               "gpt2bpetokenizer": _gpt2_bpe}


def export_tokenizer(args: Any, output_dir: Path) -> Any | None:
    """Save the run's tokenizer beside the model; None (with a warning) when it cannot be."""
    kind = str(getattr(args, "tokenizer_type", "") or "").lower()
    files = [getattr(args, "vocab_file", None)] + \
        ([getattr(args, "merge_file", None)] if kind == "gpt2bpetokenizer" else [])
    if kind not in TOKENIZERS or not all(f and Path(f).is_file() for f in files):
        LOG.warning("tokenizer not exported (tokenizer_type %r, files %s): only %s with local "
                    "files are; save a tokenizer into %s yourself", kind, files,
                    sorted(TOKENIZERS), output_dir)
        return None
    tokenizer = TOKENIZERS[kind](args)
    eod = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if eod is not None and eod != tokenizer.unk_token_id:
        tokenizer.eos_token = tokenizer.bos_token = "<|endoftext|>"
    tokenizer.save_pretrained(str(output_dir))
    return tokenizer


def choose_architecture(spec: ModelSpec, requested: str | None) -> str:
    """The requested target, or by MLP kind (gated -> llama), refusing what it cannot hold."""
    name = requested or ("llama" if spec.gated else "neox")
    problems = ARCHITECTURES[name].problems(spec)
    if problems:
        raise ExportError(f"cannot export to the HF '{name}' architecture exactly: "
                          + "; ".join(problems))
    return name


def pick_dtype(precision: str, full: StateDict) -> torch.dtype:
    """``auto``: the stored dtype, which is the run's precision (DeepSpeed saves the 16-bit
    module weights of fp16/bf16 runs; fp32 master copies live only in optimizer states)."""
    if precision != "auto":
        return DTYPES[precision]
    return full["sequential.0.word_embeddings.weight"].dtype


def write_hf_model(full: StateDict, spec: ModelSpec, output_dir: Path, *, architecture: str,
                   dtype: torch.dtype, token_ids: dict[str, Any] | None = None) -> Any:
    """Write ``config.json`` and ``model.safetensors`` for ``full``; returns the HF config."""
    from safetensors.torch import save_file

    arch = ARCHITECTURES[architecture]
    config = arch.config(spec, dict(token_ids or {}))
    config.dtype = dtype
    # Own storage per tensor: safetensors refuses views that share memory (q/k/v slices).
    tensors = {k: v.detach().to(dtype).clone().contiguous()
               for k, v in arch.weights(full, spec).items()}
    output_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(output_dir))
    save_file(tensors, str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    return config


def config_paths(ckpt_dir: Path, given: list[str] | None) -> list[str]:
    """The YAML files to read: those given, or the run's copies in ``configs/``."""
    if given:
        return given
    found = sorted(str(p) for p in (ckpt_dir / "configs").glob("*.y*ml"))
    if not found:
        raise ExportError(f"no --config_file given and {ckpt_dir / 'configs'} has no YAML files")
    return found


def load_args(paths: list[str]) -> Any:
    """NeoXArgs from the YAML files; model-only files (no batch sizes, e.g. the one
    convert_from_hf.py writes) get a neutral batch, which the export never reads."""
    from megatron.neox_arguments import ConfigError, NeoXArgs

    try:
        return NeoXArgs.from_ymls(paths)
    except ConfigError as first:
        try:
            return NeoXArgs.from_ymls(paths, overwrite_values=NEUTRAL_BATCH)
        except ConfigError:
            raise first from None


def load_checkpoint(ckpt_dir: Path, args: Any) -> tuple[ModelSpec, StateDict]:
    """The spec (vocabulary size from the config, else the stored embedding) and weights."""
    layout = detect_layout(ckpt_dir)
    shards = load_rank_state_dicts(ckpt_dir, layout)
    vocab = getattr(args, "padded_vocab_size", None) or \
        sum(s["sequential.0.word_embeddings.weight"].shape[0] for s in shards)
    spec = ModelSpec.from_args(args, padded_vocab_size=vocab)
    full = merge_shards(shards, spec)
    check_state_dict(full, spec, str(ckpt_dir))
    return spec, full


def convert(input_dir: str, output_dir: str, config_files: list[str] | None = None,
            precision: str = "auto", architecture: str | None = None) -> Path:
    """Export checkpoint ``input_dir`` to the HF folder ``output_dir``; returns the folder."""
    ckpt = resolve_checkpoint_dir(input_dir)
    args = load_args(config_paths(ckpt, config_files))
    spec, full = load_checkpoint(ckpt, args)
    name = choose_architecture(spec, architecture)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = export_tokenizer(args, out)
    # Without a tokenizer, no special ids: the HF classes' defaults (e.g. eos 2) would stop
    # generation at an arbitrary token.
    ids = {"bos_token_id": None, "eos_token_id": None} if tokenizer is None else \
        {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    write_hf_model(full, spec, out, architecture=name, dtype=pick_dtype(precision, full),
                   token_ids=ids)
    LOG.info("wrote %s model (%d layers) to %s", name, spec.num_layers, out)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_dir", required=True, help="CKPT/global_stepN (or CKPT)")
    parser.add_argument("--config_file", nargs="+", default=None,
                        help="the run's YAML files (default: input_dir/configs/*.yml)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--precision", choices=["auto", *DTYPES], default="auto")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default=None,
                        help="HF model class (default: llama for gated MLPs, else neox)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = parse_args(argv)
    try:
        convert(opts.input_dir, opts.output_dir, opts.config_file, opts.precision,
                opts.architecture)
    except (ExportError, CheckpointFormatError, ValueError) as exc:
        LOG.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
