"""Turn a local HuggingFace GPT-NeoX or LLaMA model folder into one of our checkpoints.

    python tools/convert_from_hf.py --hf_dir DIR --output_dir CKPT [--tp N] [--pp N]

Writes ``CKPT/global_step0/`` (weights sharded for ``--tp``; per-layer files when ``--pp`` >= 1),
``CKPT/latest`` and ``CKPT/global_step0/configs/model.yml``: the architecture as GPT-NeoX keys
(plus the tokenizer, copied to ``CKPT/tokenizer.json`` when the folder has one). Train from it
by stacking ``model.yml`` with a config holding the rest (batch sizes, optimizer, data,
``model_parallel_size: N``, ``pipe_parallel_size: N``) and ``load: CKPT``, ``finetune: true``.
Weights keep their dtype, so HF -> ours -> HF (tools/convert_to_hf.py) is bitwise lossless.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

try:
    import megatron  # noqa: F401
except ImportError:  # run as `python tools/convert_from_hf.py`: put the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron.model import ModelSpec
from megatron.model.checkpoint_io import CheckpointFormatError, save_as_checkpoint

LOG = logging.getLogger("convert_from_hf")
StateDict = dict[str, torch.Tensor]
PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# HF hidden_act -> our activation; LLaMA's gated MLPs use the gated name.
PLAIN_ACTS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu", "mish": "mish"}
GATED_ACTS = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "relu": "reglu"}


class HFImportError(Exception):
    """The HF folder cannot be converted (unknown model type, option, or missing files)."""


def _rope(config: Any) -> dict[str, Any]:
    """transformers 5.x keeps rotary settings in ``rope_parameters``; refuse scaled variants."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    kind = rope.get("rope_type", "default")
    if kind != "default":
        raise HFImportError(f"rope_type '{kind}' (scaled rotary) has no GPT-NeoX equivalent")
    return rope


def _activation(table: dict[str, str], config: Any) -> str:
    act = config.hidden_act
    if act not in table:
        raise HFImportError(f"hidden_act '{act}' has no equivalent here; expected one of "
                           f"{sorted(table)}")
    return table[act]


def neox_keys(config: Any) -> dict[str, Any]:
    """GPT-NeoX config keys describing an HF ``GPTNeoXConfig``."""
    rope = _rope(config)
    return {
        "num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "seq_length": config.max_position_embeddings,
        "max_position_embeddings": config.max_position_embeddings, "pos_emb": "rotary",
        "rotary_pct": rope.get("partial_rotary_factor", 1.0),
        "rotary_emb_base": rope.get("rope_theta", 10000.0), "norm": "layernorm",
        "layernorm_epsilon": config.layer_norm_eps,
        "activation": _activation(PLAIN_ACTS, config),
        "intermediate_size": config.intermediate_size,
        "gpt_j_residual": bool(config.use_parallel_residual),
        "no_weight_tying": not config.tie_word_embeddings,
        "use_bias_in_attn_linear": bool(getattr(config, "attention_bias", True)),
        "padded_vocab_size": config.vocab_size}


def llama_keys(config: Any) -> dict[str, Any]:
    """GPT-NeoX config keys for an HF ``LlamaConfig`` (gated MLP; width * 3 is GPT-NeoX's
    ``intermediate_size`` that yields the same activated width)."""
    rope = _rope(config)
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        raise HFImportError(f"head_dim {config.head_dim} * heads {config.num_attention_heads} "
                           f"!= hidden_size {config.hidden_size}; not supported")
    return {
        "num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
        "seq_length": config.max_position_embeddings,
        "max_position_embeddings": config.max_position_embeddings, "pos_emb": "rotary",
        "rotary_pct": 1.0, "rotary_emb_base": rope.get("rope_theta", 10000.0),
        "norm": "rmsnorm", "rms_norm_epsilon": config.rms_norm_eps, "use_bias_in_norms": False,
        "activation": _activation(GATED_ACTS, config),
        "intermediate_size": 3 * config.intermediate_size,
        "no_weight_tying": not config.tie_word_embeddings,
        "use_bias_in_attn_linear": bool(config.attention_bias),
        "use_bias_in_mlp": bool(getattr(config, "mlp_bias", False)),
        "padded_vocab_size": config.vocab_size}


def neox_state(hf: StateDict, spec: ModelSpec) -> StateDict:
    """``GPTNeoXForCausalLM`` names -> ours (same tensors, no copies)."""
    n = spec.num_layers
    out = {"sequential.0.word_embeddings.weight": hf["gpt_neox.embed_in.weight"]}
    names = {"input_layernorm": "input_layernorm",
             "post_attention_layernorm": "post_attention_layernorm",
             "attention.query_key_value": "attention.query_key_value",
             "attention.dense": "attention.dense", "mlp.dense_h_to_4h": "mlp.linear1",
             "mlp.dense_4h_to_h": "mlp.linear2"}
    for i in range(n):
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                key = f"gpt_neox.layers.{i}.{theirs}.{kind}"
                if key in hf:
                    out[f"sequential.{i + 2}.{ours}.{kind}"] = hf[key]
    for kind in ("weight", "bias"):
        out[f"sequential.{n + 3}.norm.{kind}"] = hf[f"gpt_neox.final_layer_norm.{kind}"]
    if not spec.tie_word_embeddings:  # transformers 5 calls embed_out lm_head
        head = hf.get("embed_out.weight", hf.get("lm_head.weight"))
        out[f"sequential.{n + 4}.final_linear.weight"] = head
    return out


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(q, k, v) -> our fused rows: [Q; K; V] with GQA, else grouped per head."""
    if spec.gqa:
        return torch.cat([q, k, v], dim=0)
    rest = q.shape[1:]
    per_head = [t.reshape(spec.num_attention_heads, spec.head_dim, *rest) for t in (q, k, v)]
    return torch.stack(per_head, dim=1).reshape(-1, *rest)  # [heads, 3, d, ...] -> rows


def llama_state(hf: StateDict, spec: ModelSpec) -> StateDict:
    """``LlamaForCausalLM`` names -> ours; linear1 is [up; gate] (value, then gate)."""
    n = spec.num_layers
    out = {"sequential.0.word_embeddings.weight": hf["model.embed_tokens.weight"]}
    for i in range(n):
        src, dst = f"model.layers.{i}.", f"sequential.{i + 2}."
        out[f"{dst}input_layernorm.scale"] = hf[f"{src}input_layernorm.weight"]
        out[f"{dst}post_attention_layernorm.scale"] = hf[f"{src}post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            if f"{src}self_attn.q_proj.{kind}" in hf:
                q, k, v = (hf[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv")
                out[f"{dst}attention.query_key_value.{kind}"] = fuse_qkv(q, k, v, spec)
                out[f"{dst}attention.dense.{kind}"] = hf[f"{src}self_attn.o_proj.{kind}"]
            if f"{src}mlp.up_proj.{kind}" in hf:
                out[f"{dst}mlp.linear1.{kind}"] = torch.cat(
                    [hf[f"{src}mlp.up_proj.{kind}"], hf[f"{src}mlp.gate_proj.{kind}"]])
                out[f"{dst}mlp.linear2.{kind}"] = hf[f"{src}mlp.down_proj.{kind}"]
    out[f"sequential.{n + 3}.norm.scale"] = hf["model.norm.weight"]
    if not spec.tie_word_embeddings:
        out[f"sequential.{n + 4}.final_linear.weight"] = hf["lm_head.weight"]
    return out


# HF model_type -> (config keys, weight renaming).
IMPORTERS: dict[str, tuple[Callable[[Any], dict[str, Any]],
                           Callable[[StateDict, ModelSpec], StateDict]]] = {
    "gpt_neox": (neox_keys, neox_state), "llama": (llama_keys, llama_state)}


def read_hf_weights(hf_dir: Path) -> StateDict:
    """Every tensor of the folder: ``*.safetensors``, else ``pytorch_model*.bin``."""
    from safetensors.torch import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if files:
        return {k: v for f in files for k, v in load_file(str(f)).items()}
    files = sorted(hf_dir.glob("pytorch_model*.bin"))
    if not files:
        raise HFImportError(f"{hf_dir} has no *.safetensors or pytorch_model*.bin files")
    return {k: v for f in files
            for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}


def model_yaml(keys: dict[str, Any], source: Path, tp: int, pp: int) -> str:
    """The generated config: a header saying how to use it, then one key per line."""
    header = (f"# Generated by tools/convert_from_hf.py from {source}.\n"
              f"# Weights: global_step0 sharded for model_parallel_size {tp}, "
              f"pipe_parallel_size {pp}.\n"
              "# Stack with a config holding batch sizes, optimizer, data, the parallel sizes\n"
              "# above, and `load: <this checkpoint folder>`, `finetune: true`.\n")
    return header + "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                                       for k, v in keys.items()) + "\n}\n"


def tokenizer_keys(hf_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Copy ``tokenizer.json`` beside the checkpoint and point an HFTokenizer at it."""
    source = hf_dir / "tokenizer.json"
    if not source.is_file():
        LOG.warning("%s has no tokenizer.json: set tokenizer_type/vocab_file yourself", hf_dir)
        return {}
    target = output_dir / "tokenizer.json"
    shutil.copyfile(source, target)
    return {"tokenizer_type": "HFTokenizer", "vocab_file": str(target.resolve())}


def hf_to_ours(hf_dir: Path) -> tuple[dict[str, Any], ModelSpec, StateDict]:
    """GPT-NeoX keys, spec and our full state dict for the HF folder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(hf_dir))
    if config.model_type not in IMPORTERS:
        raise HFImportError(f"model_type '{config.model_type}' is not supported; expected one "
                            f"of {sorted(IMPORTERS)}")
    to_keys, to_state = IMPORTERS[config.model_type]
    keys = to_keys(config)
    spec = ModelSpec.from_args(SimpleNamespace(**keys))
    hf = read_hf_weights(hf_dir)
    try:
        full = to_state(hf, spec)
    except KeyError as exc:
        raise HFImportError(f"{hf_dir}: tensor {exc} is missing for a {config.model_type} "
                            "model of this config") from None
    keys["precision"] = PRECISION.get(full["sequential.0.word_embeddings.weight"].dtype, "fp32")
    return keys, spec, full


def convert(hf_dir: str, output_dir: str, tp: int = 1, pp: int = 0) -> Path:
    """Write our checkpoint for ``hf_dir`` under ``output_dir``; returns global_step0."""
    source, out = Path(hf_dir), Path(output_dir)
    keys, spec, full = hf_to_ours(source)
    out.mkdir(parents=True, exist_ok=True)
    keys.update(tokenizer_keys(source, out))
    folder = save_as_checkpoint(full, spec, out, tp=tp, pp=pp, iteration=0,
                                config_files={"model.yml": model_yaml(keys, source, tp, pp)})
    LOG.info("wrote %s (%d layers, tp=%d, pp=%d)", folder, spec.num_layers, tp, pp)
    return folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf_dir", required=True, help="local HF model folder")
    parser.add_argument("--output_dir", required=True, help="checkpoint (save/load) folder")
    parser.add_argument("--tp", type=int, default=1, help="model_parallel_size to shard for")
    parser.add_argument("--pp", type=int, default=0,
                        help="pipe_parallel_size of the run (0: plain model files)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = parse_args(argv)
    try:
        convert(opts.hf_dir, opts.output_dir, opts.tp, opts.pp)
    except (HFImportError, CheckpointFormatError, ValueError, OSError) as exc:
        LOG.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
