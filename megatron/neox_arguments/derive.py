"""Step 4 of the pipeline: compute derived values from the keys the user set.

`derive(values, resources)` is pure and idempotent: `values` holds only the keys that were set
(or derived before), and a key that is already present is never recomputed. Without CUDA it
substitutes CPU-capable choices, logging one warning line for each.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from .resources import Resources

logger = logging.getLogger(__name__)

Values = dict[str, Any]

# GPT-NeoX's ZeRO settings when the config gives no zero_optimization dict.
ZERO_DEFAULTS: dict[str, Any] = {
    "stage": 0,
    "allgather_partitions": True,
    "reduce_scatter": True,
    "allgather_bucket_size": 500_000_000,
    "overlap_comm": False,
    "reduce_bucket_size": 500_000_000,
    "contiguous_gradients": False,
}

# Attention types that run on CPU in place of CUDA-only kernels.
CPU_ATTENTION_SUBSTITUTES = {"flash": "global"}

OPTIMIZER_TYPES = {"adam", "onebitadam", "cpu_adam", "cpu_torch_adam", "sm3", "madgrad_wd",
                   "sgd", "lion"}


def data_parallel_size(values: Values) -> int | None:
    """global_num_gpus / (max(pp, 1) * tp), or None when that is not a whole number."""
    gpus = values.get("global_num_gpus")
    model = max(values.get("pipe_parallel_size", 0), 1) * values.get("model_parallel_size", 1)
    if not gpus or model <= 0 or gpus % model:
        return None
    return gpus // model


def _exact(a: int, b: int) -> int | None:
    return a // b if b > 0 and a % b == 0 else None


def derive_batch(values: Values) -> None:
    """Fill the batch triad train_batch_size = micro * grad_accum * dp from the given keys."""
    if values.get("train_micro_batch_size_per_gpu") is None and values.get("batch_size"):
        values["train_micro_batch_size_per_gpu"] = values["batch_size"]
    if values.get("gradient_accumulation_steps") is None and values.get("gas"):
        values["gradient_accumulation_steps"] = values["gas"]
    dp = data_parallel_size(values)
    tbs = values.get("train_batch_size")
    micro = values.get("train_micro_batch_size_per_gpu")
    accum = values.get("gradient_accumulation_steps")
    if dp is None or (tbs is None and micro is None):
        return
    if tbs is not None and micro is not None:
        if accum is None:
            accum = _exact(tbs, micro * dp)
    elif tbs is not None:
        accum = accum or 1
        micro = _exact(tbs, accum * dp)
    else:
        accum = accum or 1
        tbs = micro * accum * dp
    for key, value in (("train_batch_size", tbs), ("train_micro_batch_size_per_gpu", micro),
                       ("gradient_accumulation_steps", accum)):
        if value is not None:
            values.setdefault(key, value)


def derive_precision(values: Values) -> None:
    """precision from the fp16/bf16 dicts, or the dict from `precision`."""
    fp16 = (values.get("fp16") or {}).get("enabled", False)
    bf16 = (values.get("bf16") or {}).get("enabled", False)
    if values.get("precision") is None:
        values["precision"] = "fp16" if fp16 else "bf16" if bf16 else "fp32"
    elif values["precision"] == "fp16" and values.get("fp16") is None:
        values["fp16"] = {"enabled": True}
    elif values["precision"] == "bf16" and values.get("bf16") is None:
        values["bf16"] = {"enabled": True}


def derive_optimizer(values: Values) -> None:
    """lr and optimizer_type from the optimizer dict; ZeRO shorthands from zero_optimization."""
    optimizer = values.get("optimizer") or {}
    lr = (optimizer.get("params") or {}).get("lr")
    if values.get("lr") is None and lr is not None:
        values["lr"] = lr
    kind = str(optimizer.get("type", "")).lower()
    if "optimizer_type" not in values and kind in OPTIMIZER_TYPES:
        values["optimizer_type"] = kind
    if values.get("zero_optimization") is None:
        values["zero_optimization"] = copy.deepcopy(ZERO_DEFAULTS)
        if isinstance(values.get("zero_stage"), int):  # the shorthand alone picks the stage
            values["zero_optimization"]["stage"] = values["zero_stage"]
    zero = values["zero_optimization"]
    for key, name in (("zero_stage", "stage"), ("zero_reduce_scatter", "reduce_scatter"),
                      ("zero_contiguous_gradients", "contiguous_gradients"),
                      ("zero_reduce_bucket_size", "reduce_bucket_size"),
                      ("zero_allgather_bucket_size", "allgather_bucket_size")):
        if values.get(key) is None:
            values[key] = zero.get(name, ZERO_DEFAULTS[name])


def expand_attention_config(config: Any, num_layers: int) -> list[str] | None:
    """[[[types], repeat], ...] to one type per layer; None when the format is not understood.

    `repeat` may be "all", meaning as often as needed to cover num_layers.
    """
    if config is None:
        return ["global"] * num_layers
    if all(isinstance(item, str) for item in config):
        return list(config)
    layers: list[str] = []
    for item in config:
        if not isinstance(item, list | tuple) or len(item) != 2:
            return None
        kinds, repeat = item
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if repeat == "all" and kinds:
            repeat = num_layers // len(kinds)
        if not isinstance(repeat, int) or isinstance(repeat, bool):
            return None
        layers += kinds * repeat
    return layers


# The gated activation that older GPT-NeoX's LLaMA MLP computes for each `activation`.
LEGACY_GATES = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "relu": "reglu"}


def derive_legacy_mlp(values: Values) -> None:
    """Older GPT-NeoX configs ask for LLaMA's MLP with `mlp_type: llama`.

    That MLP gates with `activation` (silu in every published config, so swiglu). Its width
    is `intermediate_size` as given (Mistral: 14336), else int(2 * 4h / 3) rounded up to 256.
    Today's keys size a gated MLP as int(2 * intermediate_size / 3) / 2 rounded up to
    `mlp_multiple_of`, so the same widths come from 3 * width with multiple 1, and from 8h
    with multiple 256.
    """
    if values.get("mlp_type") != "llama":
        return
    activation = values.get("activation", "gelu")
    values["activation"] = LEGACY_GATES.get(activation, activation)
    hidden, width = values.get("hidden_size"), values.get("intermediate_size")
    if width is not None:
        values["intermediate_size"] = 3 * width
        values.setdefault("mlp_multiple_of", 1)
    elif hidden and not values.get("expansion_factor"):
        values["intermediate_size"] = 8 * hidden
        values.setdefault("mlp_multiple_of", 256)
    values["mlp_type"] = "regular"


def derive_layers(values: Values) -> None:
    """Per-layer attention types, pipeline flag, and LR decay length."""
    layers = values.get("num_layers")
    if layers is not None:
        expanded = expand_attention_config(values.get("attention_config"), layers)
        if expanded is not None:
            values["attention_config"] = expanded
    values.setdefault("is_pipe_parallel", values.get("pipe_parallel_size", 0) >= 1)
    iters = values.get("train_iters")
    if values.get("lr_decay_iters") is None and iters is not None:
        fraction = values.get("lr_decay_fraction")
        values["lr_decay_iters"] = int(fraction * iters) if fraction is not None else iters


def _cpu_backend(values: Values) -> str | None:
    if values.get("distributed_backend", "nccl") != "nccl":
        return None
    values["distributed_backend"] = "gloo"
    return "distributed_backend nccl -> gloo (no CUDA)"


def _cpu_fp16(values: Values) -> str | None:
    if values.get("precision") != "fp16":
        return None
    values["precision"] = "bf16"
    values.pop("fp16", None)
    values["bf16"] = {"enabled": True}
    return "precision fp16 -> bf16 (fp16 needs CUDA)"


def _cpu_attention(values: Values) -> str | None:
    config = values.get("attention_config")
    if not config or not any(c in CPU_ATTENTION_SUBSTITUTES for c in config if isinstance(c, str)):
        return None
    values["attention_config"] = [CPU_ATTENTION_SUBSTITUTES.get(c, c) if isinstance(c, str)
                                  else c for c in config]
    return "attention_config flash -> global (PyTorch SDPA; flash-attn needs CUDA)"


CPU_SUBSTITUTIONS: list[Callable[[Values], str | None]] = [_cpu_backend, _cpu_fp16,
                                                           _cpu_attention]


def derive(values: Values, resources: Resources) -> Values:
    """Return a copy of `values` with every derived key filled in; see the module docstring."""
    out = copy.deepcopy(values)
    out.setdefault("global_num_gpus", resources.world_size)
    derive_batch(out)
    derive_precision(out)
    derive_optimizer(out)
    derive_legacy_mlp(out)
    derive_layers(out)
    if not resources.has_cuda:
        for substitute in CPU_SUBSTITUTIONS:
            message = substitute(out)
            if message:
                logger.warning("no CUDA: %s", message)
    return out
