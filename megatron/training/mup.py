"""muP (Yang et al. 2022, arXiv:2203.03466) with GPT-NeoX's keys, on Microsoft's ``mup``.

A muP run trains a wide model with hyperparameters tuned on a narrow one. Three things make
that transfer work, and each has one function here:

1. Base shapes. ``save_base_shapes: true`` writes ``base_shapes_file`` from the configured
   (base) model and a delta model ``mup_width_scale`` times wider, then exits, as GPT-NeoX
   does. A later run with ``use_mup`` reads it: a dimension that differs between base and
   delta is a width, and its width multiplier is (this model's size) / (base size).
2. Multipliers in the model (``ModelSpec`` fields, set by ``ModelSpec.from_args``):
   attention scores scaled by 1/(head_dim * mup_attn_temp) instead of 1/sqrt(head_dim),
   embeddings times ``mup_embedding_mult``, logits times 1/(mup_output_temp * width_mult)
   (``prepare_spec`` folds in the width multiplier read from the base shapes).
3. Init and learning rates. Matrix-like weights (two width dimensions) start with their
   standard deviation divided by sqrt(width_mult); every weight matrix is multiplied by
   ``mup_init_scale``. Param groups get MuAdam's rule (matrix-like: lr / width_mult, weight
   decay * width_mult) or, for SGD, MuSGD's (vector-like: lr * width_mult, matrix-like:
   lr / (fan_in mult / fan_out mult)). Rates are ``lr_scale`` factors that AnnealingLR applies.

Shapes are always *full* shapes: a tensor-parallel shard is counted at its unsharded size,
so the same base shapes file serves every layout. Parameter names are the plain model's
(``sequential.<i>.<param>``); a pipeline's names are mapped onto them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from megatron.model import ModelSpec, build_model
from megatron.parallel import ProcessGroups

LOG = logging.getLogger(__name__)
EMBEDDING = "sequential.0.word_embeddings.weight"
SGD_LIKE = {"sgd"}
ADAM_LIKE = {"adam", "adamw", "cpu_adam", "cpu_torch_adam", "lion", "madgrad_wd", "sm3"}


class MupError(ValueError):
    """The muP settings, the base shapes file or the optimizer do not fit together."""


def delta_spec(spec: ModelSpec, width_scale: int) -> ModelSpec:
    """``spec`` made ``width_scale`` times wider (heads keep their count, so grow wider)."""
    if width_scale < 2:
        raise MupError(f"mup_width_scale must be at least 2, got {width_scale}")
    inter = spec.intermediate_size * width_scale if spec.intermediate_size else None
    return dataclasses.replace(
        spec, hidden_size=spec.hidden_size * width_scale, intermediate_size=inter
    )


def canonical_name(name: str) -> str:
    """A pipeline's ``<i>.<param>`` / ``tied_modules.<key>.<param>`` as the plain model names it."""
    tied = re.match(r"tied_modules\.[^.]+\.(.*)$", name)
    if tied:
        return f"sequential.0.{tied.group(1)}"
    indexed = re.match(r"(\d+)\.(.*)$", name)
    return f"sequential.{indexed.group(1)}.{indexed.group(2)}" if indexed else name


def full_shape(param: torch.Tensor, tp_size: int) -> tuple[int, ...]:
    """The unsharded shape of a tensor-parallel shard (layers mark ``partition_dim``)."""
    shape = list(param.shape)
    dim = getattr(param, "partition_dim", None)
    if getattr(param, "model_parallel", False) and dim is not None and tp_size > 1:
        shape[dim] *= tp_size
    return tuple(shape)


def _plain_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def save_base_shapes(spec: ModelSpec, path: str | Path, width_scale: int) -> None:
    """Write the base shapes file from ``spec`` (the base) and its ``width_scale`` delta."""
    from mup import make_base_shapes

    base = _plain_shapes(dataclasses.replace(spec, output_mult=1.0))
    delta = _plain_shapes(delta_spec(dataclasses.replace(spec, output_mult=1.0), width_scale))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    make_base_shapes(base, delta, savefile=str(path))
    LOG.info("muP base shapes written to %s", path)


def load_base_shapes(path: str | Path) -> dict[str, Any]:
    """The file's base ``InfShape`` per parameter name."""
    from mup.shape import load_base_shapes as load

    if not Path(path).is_file():
        raise MupError(
            f"base_shapes_file {str(path)!r} does not exist; write it first with "
            "save_base_shapes: true on the base (narrow) config"
        )
    return load(str(path))


def readout_width_mult(base: dict[str, Any], spec: ModelSpec, where: str) -> float:
    """Width multiplier of the hidden size: this model's hidden_size / the base's."""
    if EMBEDDING not in base:
        raise MupError(f"{where}: no entry {EMBEDDING!r}; was it written by this trainer?")
    base_hidden = base[EMBEDDING].base_shape()[-1] or spec.hidden_size
    return spec.hidden_size / base_hidden


def prepare_spec(spec: ModelSpec, args: Any) -> ModelSpec:
    """``spec`` with the logit multiplier divided by the readout's width multiplier."""
    if not args.base_shapes_file:
        LOG.warning("use_mup without base_shapes_file: this model is its own base "
                    "(every width multiplier is 1)")
        return spec
    base = load_base_shapes(args.base_shapes_file)
    mult = readout_width_mult(base, spec, args.base_shapes_file)
    return dataclasses.replace(spec, output_mult=spec.output_mult / mult)


def set_infshapes(module: torch.nn.Module, base: dict[str, Any] | None, tp_size: int,
                  where: str = "base_shapes_file") -> None:
    """Give every parameter its ``infshape`` (``base`` None: the model is its own base)."""
    from mup.infshape import zip_infshape

    for name, param in module.named_parameters():
        shape = full_shape(param, tp_size)
        key = canonical_name(name)
        if base is None:
            param.infshape = zip_infshape(shape, shape)
            continue
        if key not in base:
            raise MupError(f"{where}: no base shape for parameter {key!r}; the file was "
                           "written for a different architecture")
        if len(base[key]) != len(shape):
            raise MupError(f"{where}: {key!r} has {len(base[key])} dims in the file, "
                           f"{len(shape)} in this model")
        param.infshape = zip_infshape(base[key], shape)


@torch.no_grad()
def rescale_init(module: torch.nn.Module, init_scale: float) -> None:
    """muP's init on top of the standard one: matrix-like std / sqrt(width_mult), and every
    weight matrix times ``init_scale`` (norm gains and biases are left alone)."""
    for param in module.parameters():
        if param.dim() < 2:
            continue
        factor = init_scale
        if param.infshape.ninf() == 2:
            factor /= math.sqrt(param.infshape.width_mult())
        if factor != 1.0:
            param.mul_(factor)


def _split(group: dict[str, Any], key_of: Any) -> dict[Any, dict[str, Any]]:
    parts: dict[Any, dict[str, Any]] = defaultdict(
        lambda: {**{k: v for k, v in group.items() if k != "params"}, "params": []})
    for param in group["params"]:
        if param.infshape.ninf() > 2:
            raise MupError(f"muP handles at most 2 width dims; a parameter of shape "
                           f"{tuple(param.shape)} has {param.infshape.ninf()}")
        parts[key_of(param)]["params"].append(param)
    return parts


def _adam_rule(param: torch.nn.Parameter) -> float:
    return param.infshape.width_mult() if param.infshape.ninf() == 2 else 1.0


def _sgd_rule(param: torch.nn.Parameter) -> float:
    ninf = param.infshape.ninf()
    if ninf == 1:
        return 1.0 / param.infshape.width_mult()
    return param.infshape.fanin_fanout_mult_ratio() if ninf == 2 else 1.0


def mup_param_groups(groups: list[dict[str, Any]], optimizer_type: str,
                     weight_decay: float) -> list[dict[str, Any]]:
    """Split param groups so each has one muP factor ``f``: ``lr_scale = 1/f`` and weight
    decay times ``f`` (MuAdam for Adam-like optimizers, MuSGD for SGD)."""
    kind = optimizer_type.lower()
    if kind in SGD_LIKE:
        rule = _sgd_rule
    elif kind in ADAM_LIKE:
        rule = _adam_rule
    else:
        raise MupError(f"use_mup: optimizer.type {optimizer_type!r} has no muP rule; use one "
                       f"of {sorted(ADAM_LIKE | SGD_LIKE)}")
    out = []
    for group in groups:
        for factor, part in _split(group, rule).items():
            part["lr_scale"] = part.get("lr_scale", 1.0) / factor
            part["weight_decay"] = part.get("weight_decay", weight_decay) * factor
            out.append(part)
    return out


def apply_mup(model: torch.nn.Module, args: Any, tp_size: int) -> None:
    """Infshapes from ``base_shapes_file`` (or the model itself), then muP's init."""
    base = load_base_shapes(args.base_shapes_file) if args.base_shapes_file else None
    set_infshapes(model, base, tp_size, args.base_shapes_file or "base_shapes_file")
    rescale_init(model, args.mup_init_scale)


def setup_spec(args: Any, spec: ModelSpec, is_rank0: bool) -> ModelSpec:
    """The worker's muP entry: with ``save_base_shapes`` write the file and stop the run
    (``SystemExit(0)`` on every rank, as GPT-NeoX exits); else the spec with its multipliers."""
    if args.save_base_shapes:
        if not args.base_shapes_file:
            raise MupError("save_base_shapes: true needs base_shapes_file (where to write)")
        if is_rank0:
            save_base_shapes(spec, args.base_shapes_file, args.mup_width_scale)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        raise SystemExit(0)
    return prepare_spec(spec, args)
