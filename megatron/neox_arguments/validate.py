"""Step 5 of the pipeline: cross-key checks, each a small named function returning problems.

`validate(values, origins)` runs every check on the complete value dict (defaults, user keys
and derived keys) and returns all problems, so that the user sees them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .derive import data_parallel_size
from .errors import Origin, Problem

Values = Mapping[str, Any]
Origins = Mapping[str, Origin]

REQUIRED_FOR_TRAINING = ("num_layers", "hidden_size", "num_attention_heads", "seq_length",
                         "max_position_embeddings")

# Every attention type name GPT-NeoX knows; support.py says which of them we cannot run yet.
ATTENTION_TYPES = {"global", "local", "sparse_fixed", "sparse_variable", "bigbird",
                   "bslongformer", "gmlp", "amlp", "flash", "rwkv", "mamba"}


def _problem(key: str, values: Values, origins: Origins, message: str, hint: str = "") -> Problem:
    return Problem(key, message, values.get(key), origins.get(key), hint)


def check_required(values: Values, origins: Origins) -> list[Problem]:
    """Model size keys that training cannot do without."""
    return [Problem(key, "is required for training but not set", origin=None,
                    hint=f"add '{key}: ...' to one of the config files")
            for key in REQUIRED_FOR_TRAINING if values.get(key) is None]


def check_positive(values: Values, origins: Origins) -> list[Problem]:
    """Sizes and counts must be positive where set."""
    keys = (*REQUIRED_FOR_TRAINING, "model_parallel_size", "train_batch_size",
            "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "num_kv_heads")
    return [_problem(k, values, origins, "must be a positive integer")
            for k in keys if values.get(k) is not None and values[k] <= 0]


def check_timeout(values: Values, origins: Origins) -> list[Problem]:
    """A zero or negative collective timeout would fail the very first collective."""
    key = "distributed_timeout_minutes"
    if values.get(key) is not None and values[key] <= 0:
        return [_problem(key, values, origins, "must be a positive number of minutes",
                         "e.g. 10; fractions such as 0.5 are allowed")]
    return []


def check_hidden_divisible_by_heads(values: Values, origins: Origins) -> list[Problem]:
    """Each head gets hidden_size / num_attention_heads dimensions."""
    hidden, heads = values.get("hidden_size"), values.get("num_attention_heads")
    if hidden and heads and hidden > 0 and heads > 0 and hidden % heads:
        return [_problem("hidden_size", values, origins,
                         f"must be divisible by num_attention_heads={heads}")]
    return []


def check_heads_divisible_by_tp(values: Values, origins: Origins) -> list[Problem]:
    """Tensor parallelism splits whole heads over ranks."""
    heads, tp = values.get("num_attention_heads"), values.get("model_parallel_size", 1)
    kv = values.get("num_kv_heads")
    out = []
    if heads and tp and tp > 0 and heads > 0 and heads % tp:
        out.append(_problem("num_attention_heads", values, origins,
                            f"must be divisible by model_parallel_size={tp}"))
    if kv and tp and tp > 0 and kv > 0 and kv % tp:
        out.append(_problem("num_kv_heads", values, origins,
                            f"must be divisible by model_parallel_size={tp}"))
    return out


def check_kv_heads(values: Values, origins: Origins) -> list[Problem]:
    """Grouped-query attention shares each key/value head among whole groups of query heads."""
    heads, kv = values.get("num_attention_heads"), values.get("num_kv_heads")
    if heads and kv and heads > 0 and kv > 0 and heads % kv:
        return [_problem("num_kv_heads", values, origins,
                         f"must divide num_attention_heads={heads}")]
    return []


def check_seq_length_fits(values: Values, origins: Origins) -> list[Problem]:
    """Positions beyond max_position_embeddings have no encoding."""
    seq, most = values.get("seq_length"), values.get("max_position_embeddings")
    if seq and most and seq > most:
        return [_problem("seq_length", values, origins,
                         f"exceeds max_position_embeddings={most}",
                         "raise max_position_embeddings or shorten seq_length")]
    return []


# Keys that are fractions, with the range each must lie in.
FRACTIONS = {"rotary_pct": (0.0, 1.0), "warmup": (0.0, 1.0), "hidden_dropout": (0.0, 1.0),
             "attention_dropout": (0.0, 1.0), "lr_decay_fraction": (0.0, 1.0)}


def check_fractions(values: Values, origins: Origins) -> list[Problem]:
    """Fractions and probabilities lie between 0 and 1."""
    return [_problem(key, values, origins, f"must lie in [{low}, {high}]")
            for key, (low, high) in FRACTIONS.items()
            if values.get(key) is not None and not low <= values[key] <= high]


def check_mlp_width(values: Values, origins: Origins) -> list[Problem]:
    """intermediate_size and expansion_factor are two ways to say the same thing."""
    if values.get("intermediate_size") and values.get("expansion_factor"):
        return [_problem("expansion_factor", values, origins,
                         f"conflicts with intermediate_size={values['intermediate_size']}",
                         "set only one of them")]
    return []


def check_batch_triad(values: Values, origins: Origins) -> list[Problem]:
    """train_batch_size = micro * grad_accum * dp, with dp = gpus / (max(pp, 1) * tp)."""
    gpus = values.get("global_num_gpus")
    dp = data_parallel_size(values)
    if dp is None:
        return [_problem("global_num_gpus", values, origins,
                         "must be divisible by max(pipe_parallel_size, 1) * model_parallel_size "
                         f"(pp={values.get('pipe_parallel_size')}, "
                         f"tp={values.get('model_parallel_size')}, gpus={gpus})")]
    tbs = values.get("train_batch_size")
    micro = values.get("train_micro_batch_size_per_gpu")
    accum = values.get("gradient_accumulation_steps")
    if tbs is None and micro is None:
        return [Problem("train_micro_batch_size_per_gpu", "is required for training (or "
                        "train_batch_size)", hint="set two of train_batch_size, "
                        "train_micro_batch_size_per_gpu, gradient_accumulation_steps")]
    if None in (tbs, micro, accum) or tbs != micro * accum * dp:
        key = "train_batch_size" if "train_batch_size" in origins else (
            "train_micro_batch_size_per_gpu")
        return [_problem(key, values, origins,
                         f"inconsistent batch sizes: train_batch_size={tbs} must equal "
                         f"train_micro_batch_size_per_gpu={micro} x gradient_accumulation_steps="
                         f"{accum} x data_parallel_size={dp}")]
    return []


def check_zero_with_pipeline(values: Values, origins: Origins) -> list[Problem]:
    """DeepSpeed's pipeline engine cannot shard gradients (ZeRO stage 2 or 3)."""
    stage = (values.get("zero_optimization") or {}).get("stage", 0)
    if values.get("pipe_parallel_size", 0) >= 1 and isinstance(stage, int) and stage >= 2:
        origin = origins.get("zero_optimization")
        return [Problem("zero_optimization", f"ZeRO stage {stage} cannot be combined with "
                        f"pipe_parallel_size={values['pipe_parallel_size']}", stage, origin,
                        "use ZeRO stage 0 or 1, or set pipe_parallel_size: 0")]
    return []


def check_attention_config(values: Values, origins: Origins) -> list[Problem]:
    """The expanded attention_config names one known type per layer."""
    config, layers = values.get("attention_config"), values.get("num_layers")
    if config is None or layers is None:
        return []
    if not all(isinstance(c, str) for c in config):
        return [_problem("attention_config", values, origins,
                         "expected [[[TYPE, ...], REPEAT], ...]", "e.g. [[['global'], 12]]")]
    out = []
    if len(config) != layers:
        out.append(_problem("attention_config", values, origins,
                            f"covers {len(config)} layers but num_layers={layers}"))
    unknown = sorted({c for c in config if c not in ATTENTION_TYPES})
    if unknown:
        out.append(_problem("attention_config", values, origins,
                            f"unknown attention types {unknown}",
                            "expected one of " + ", ".join(sorted(ATTENTION_TYPES))))
    return out


def check_precision(values: Values, origins: Origins) -> list[Problem]:
    """`precision` must agree with the fp16/bf16 dicts."""
    fp16 = (values.get("fp16") or {}).get("enabled", False)
    bf16 = (values.get("bf16") or {}).get("enabled", False)
    precision = values.get("precision")
    if fp16 and bf16:
        return [_problem("fp16", values, origins, "fp16 and bf16 are both enabled",
                         "enable only one")]
    if (fp16 and precision != "fp16") or (bf16 and precision != "bf16"):
        return [_problem("precision", values, origins,
                         "disagrees with the enabled fp16/bf16 dict")]
    return []


CHECKS: list[Callable[[Values, Origins], list[Problem]]] = [
    check_required,
    check_positive,
    check_timeout,
    check_hidden_divisible_by_heads,
    check_heads_divisible_by_tp,
    check_kv_heads,
    check_mlp_width,
    check_seq_length_fits,
    check_fractions,
    check_batch_triad,
    check_zero_with_pipeline,
    check_attention_config,
    check_precision,
]


def validate(values: Values, origins: Origins) -> list[Problem]:
    """Run every check and return all problems found."""
    return [problem for check in CHECKS for problem in check(values, origins)]
