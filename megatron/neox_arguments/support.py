"""What this trainer cannot do yet, what it runs more slowly, and which input files are missing.

Each unsupported feature is one `Unsupported` entry in `UNSUPPORTED`; delete the entry when
the feature is built. deepy.py calls these before it starts any worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ATTENTION = {"global", "local", "flash"}


@dataclass(frozen=True)
class Unsupported:
    """A key whose value names a feature we have not built, when `applies(value, args)`."""

    key: str
    applies: Callable[[Any, Any], bool]
    reason: str


def _truthy(value: Any, args: Any) -> bool:
    return bool(value)


def _enabled(value: Any, args: Any) -> bool:
    return bool(value and value.get("enabled", True))


UNSUPPORTED: list[Unsupported] = [
    Unsupported("moe_num_experts", lambda v, a: v > 1, "mixture of experts"),
    Unsupported("attention_config",
                lambda v, a: any(t not in SUPPORTED_ATTENTION for t in v or []),
                "only global, local and flash attention are built"),
    Unsupported("coord_check", _truthy, "muP coordinate-check plots"),
    Unsupported("train_impl", lambda v, a: v != "normal", "only the language-modelling objective"),
    Unsupported("dataset_impl", lambda v, a: v != "gpt2", "pairwise datasets"),
    Unsupported("lr_decay_style", lambda v, a: v.startswith("infinite"),
                "infinite LR schedules"),
    Unsupported("train_epochs", _truthy, "epoch-based run length; set train_iters"),
    Unsupported("curriculum_learning", _enabled, "curriculum learning"),
    Unsupported("s3_path", _truthy, "S3 checkpoint upload"),
    Unsupported("autotuning", _enabled, "DeepSpeed autotuning"),
    Unsupported("autotuning_run", _truthy, "DeepSpeed autotuning"),
    Unsupported("te_columnparallel", _truthy, "Transformer Engine layers"),
    Unsupported("te_rowparallel", _truthy, "Transformer Engine layers"),
    Unsupported("te_layernorm_mlp", _truthy, "Transformer Engine layers"),
    Unsupported("te_mha", _truthy, "Transformer Engine layers"),
    Unsupported("te_fp8_mha", _truthy, "Transformer Engine layers"),
    Unsupported("use_comet", _truthy, "Comet logging"),
    Unsupported("sparsity_config", _truthy, "sparse attention"),
    Unsupported("num_unique_layers", lambda v, a: v not in (None, a.num_layers),
                "layer weight sharing"),
    Unsupported("opt_pos_emb_offset", lambda v, a: v != 0, "OPT position offset"),
    Unsupported("soft_prompt_tuning", _enabled, "soft prompt tuning"),
    Unsupported("load_universal", _truthy, "loading DeepSpeed universal checkpoints"),
]

# Speed-only switches: we run the same math with plain PyTorch ops instead.
PERFORMANCE_SWITCHES = (
    "scaled_upper_triang_masked_softmax_fusion",
    "scaled_masked_softmax_fusion",
    "bias_gelu_fusion",
    "bias_dropout_fusion",
    "rope_fusion",
    "layernorm_fusion",
    "use_flashattn_swiglu",
    "mamba_selective_scan_fusion",
    "mamba_causal_conv_fusion",
    "mamba_inner_func_fusion",
)


def unsupported_features(args: Any) -> list[str]:
    """One message per feature the config asks for that we have not built."""
    messages = []
    for entry in UNSUPPORTED:
        value = getattr(args, entry.key, None)
        if value is not None and entry.applies(value, args):
            messages.append(f"not supported yet: {entry.key}={value!r} ({entry.reason})")
    return messages


def performance_fallbacks(args: Any) -> list[str]:
    """One warning per fused-kernel switch that is on; the math is unchanged, only slower."""
    return [f"{key}=True: no fused kernel here, falls back to plain PyTorch"
            for key in PERFORMANCE_SWITCHES if getattr(args, key, False)]


def _data_prefixes(args: Any) -> list[str]:
    prefixes = [args.data_path] if getattr(args, "data_path", None) else []
    for name in ("train_data_paths", "valid_data_paths", "test_data_paths",
                 "train_label_data_paths", "valid_label_data_paths",
                 "test_label_data_paths", "label_data_paths"):
        prefixes += getattr(args, name, None) or []
    return prefixes


def missing_paths(args: Any) -> list[str]:
    """Input files that do not exist: dataset PREFIX.bin/.idx, tokenizer files, and the
    checkpoint `iteration` under `load` when one is asked for. A missing `load` folder is fine.
    """
    wanted = [f"{prefix}{suffix}" for prefix in _data_prefixes(args)
              for suffix in (".bin", ".idx")]
    wanted += [p for p in (getattr(args, "vocab_file", None),
                           getattr(args, "merge_file", None)) if p]
    missing = [p for p in wanted if not Path(p).exists()]
    load, iteration = getattr(args, "load", None), getattr(args, "iteration", None)
    if load and iteration is not None:
        step = Path(load) / f"global_step{iteration}"
        if not step.exists():
            missing.append(str(step))
    return missing
