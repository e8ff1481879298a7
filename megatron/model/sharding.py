"""Small helpers shared by the tensor-parallel model layers."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from megatron.model.errors import ModelSpecError
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import Group
from megatron.parallel.mappings import copy_to_tp


def no_init(tensor: torch.Tensor) -> None:
    """Leave construction-time values alone; ``init.initialize_layer`` fills every tensor."""


def per_rank(total: int, tp: Group, what: str) -> int:
    """``total / tp.size``, or a ModelSpecError naming ``what`` when it does not divide."""
    if total % tp.size != 0:
        raise ModelSpecError(f"{what} = {total} is not divisible by the tensor-parallel size "
                             f"{tp.size} (model_parallel_size)")
    return total // tp.size


def replicated(param: torch.Tensor, tp: Group, needed: bool = True) -> torch.Tensor:
    """``param`` as used where each rank sees only part of the data (a sequence shard or a
    block of heads): identity forward, gradient summed over ``tp`` in backward, so every rank
    ends up with the full gradient of the replicated parameter."""
    return copy_to_tp(param, tp) if needed else param


def apply_replicated(module: nn.Module, x: torch.Tensor, tp: Group,
                     needed: bool = True) -> torch.Tensor:
    """Run ``module(x)`` with each of its parameters passed through ``replicated``."""
    if not needed or tp.size == 1:
        return module(x)
    params = {name: copy_to_tp(p, tp) for name, p in module.named_parameters()}
    return functional_call(module, params, (x,))


# Parameter-name suffix -> tensor-parallel split dimension (everything else is replicated).
_SPLIT_DIM = {
    "word_embeddings.weight": 0, "final_linear.weight": 0,
    "attention.query_key_value.weight": 0, "attention.query_key_value.bias": 0,
    "mlp.linear1.weight": 0, "mlp.linear1.bias": 0,
    "attention.dense.weight": 1, "mlp.linear2.weight": 1, "attention.positional.weight": 1,
}


def shard_layout(spec: ModelSpec, name: str) -> tuple[int | None, list[int] | None]:
    """How parameter ``name`` is split across tensor-parallel ranks, from the spec alone.

    For converters and checkpoint tools that never build the model: returns ``(dim,
    sections)``; ``dim`` None means replicated, ``sections`` (full sizes along ``dim``) means
    each section is split separately and every rank stores its blocks concatenated (fused QKV
    under GQA, gated linear1). Agrees with the attributes the built layers carry (tested).
    """
    dim = next((d for suffix, d in _SPLIT_DIM.items() if name.endswith(suffix)), None)
    sections = None
    if name.endswith(("attention.query_key_value.weight", "attention.query_key_value.bias")) \
            and spec.gqa:
        d = spec.head_dim
        sections = [spec.num_attention_heads * d, spec.kv_heads * d, spec.kv_heads * d]
    elif name.endswith(("mlp.linear1.weight", "mlp.linear1.bias")) and spec.gated:
        sections = [spec.mlp_width, spec.mlp_width]
    return dim, sections
