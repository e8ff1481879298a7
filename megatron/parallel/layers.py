"""Tensor-parallel layers: column- and row-parallel linears and a vocab-parallel embedding.

Sharding is recorded on every parameter so that initialisation and export never depend on the
layout. Each parameter carries:

- ``tp_dim``: the dimension split across the tensor-parallel group (``0`` or ``1``), or
  ``None`` when the parameter is replicated;
- ``model_parallel`` / ``tensor_model_parallel``: True when sharded (the names DeepSpeed reads
  to count a parameter in the gradient norm on every model-parallel rank), with
  ``partition_dim`` / ``partition_stride`` as Megatron names them;
- ``sequence_parallel``: True for replicated parameters used on a sequence shard, whose
  gradients must be summed over the group (see ``mappings.all_reduce_sequence_parallel_grads``).

A layout-independent initialiser builds the FULL tensor from ``(seed, name)`` and keeps
``shard(full, param.tp_dim, tp)``; ``gather_full`` rebuilds the full tensor for export/tests.
Layers initialise themselves the same way by default: ``init_method`` fills the full tensor
(from the global RNG, which is identical on every tensor-parallel rank) and the layer keeps its
slice, so TP=1 and TP=2 hold the same full weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from megatron.parallel.errors import LayoutError
from megatron.parallel.groups import Group
from megatron.parallel.mappings import (
    copy_to_tp,
    gather_along,
    gather_from_sequence_parallel,
    gather_from_tp,
    reduce_from_tp,
    reduce_scatter_to_sequence_parallel,
    scatter_to_tp,
    split_along,
)
from megatron.utils.gemm import linear

InitMethod = Callable[[torch.Tensor], Any]
"""Fills a full (unsharded) tensor in place, like the ``torch.nn.init`` functions."""

LinearOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]


def default_init(tensor: torch.Tensor) -> Any:
    """Normal(0, 0.02), GPT-NeoX's default ``init_method_std``."""
    return nn.init.normal_(tensor, mean=0.0, std=0.02)


def set_tp_attributes(
    param: torch.Tensor, dim: int | None, sequence_parallel: bool = False
) -> None:
    """Record how ``param`` is sharded (see the module docstring for the attributes)."""
    param.tp_dim = dim  # type: ignore[attr-defined]
    param.model_parallel = dim is not None  # type: ignore[attr-defined]
    param.tensor_model_parallel = dim is not None  # type: ignore[attr-defined]
    param.partition_dim = -1 if dim is None else dim  # type: ignore[attr-defined]
    param.partition_stride = 1  # type: ignore[attr-defined]
    param.sequence_parallel = sequence_parallel  # type: ignore[attr-defined]


def shard(full: torch.Tensor, dim: int | None, tp: Group) -> torch.Tensor:
    """This rank's contiguous block of a full tensor along ``dim`` (``None``: replicated).

    Raises:
        LayoutError: if the dimension does not divide by ``tp.size``.
    """
    if dim is None:
        return full
    return split_along(full, dim, tp)


def gather_full(local: torch.Tensor, dim: int | None, tp: Group) -> torch.Tensor:
    """Rebuild the full tensor from every rank's shard (a collective; not differentiable)."""
    if dim is None:
        return local
    return gather_along(local.detach(), dim, tp)


def _per_rank(total: int, tp: Group, what: str) -> int:
    if total % tp.size != 0:
        raise LayoutError(f"{what} = {total} is not divisible by the tensor-parallel size "
                          f"{tp.size}; pad it or pick a model_parallel_size that divides it")
    return total // tp.size


def _parameter(shape: tuple[int, ...], dim: int | None, tp: Group, init: InitMethod,
               dtype: torch.dtype, sequence_parallel: bool = False) -> nn.Parameter:
    full = torch.empty(shape, dtype=dtype)
    init(full)
    param = nn.Parameter(shard(full, dim, tp).clone())
    set_tp_attributes(param, dim, sequence_parallel)
    return param


class ColumnParallelLinear(nn.Module):
    """``y = x A^T + b`` with ``A`` split by output rows: each rank computes ``out/tp`` features.

    Input ``[..., in]`` replicated (or ``[b, s/tp, in]`` with sequence parallelism, gathered
    here); output ``[..., out/tp]``, or ``[..., out]`` with ``gather_output``.
    """

    def __init__(self, in_features: int, out_features: int, tp: Group, bias: bool = True,
                 gather_output: bool = False, sequence_parallel: bool = False, *,
                 skip_bias_add: bool = False, init_method: InitMethod = default_init,
                 params_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tp, self.gather_output = tp, gather_output
        self.sequence_parallel, self.skip_bias_add = sequence_parallel, skip_bias_add
        self.in_features, self.out_features = in_features, out_features
        self.out_per_rank = _per_rank(out_features, tp, "out_features")
        self.weight = _parameter((out_features, in_features), 0, tp, init_method, params_dtype)
        self.bias = (_parameter((out_features,), 0, tp, nn.init.zeros_, params_dtype)
                     if bias else None)

    def forward(self, x: torch.Tensor) -> LinearOutput:
        """Returns the output, or ``(output, bias)`` when ``skip_bias_add``."""
        if self.sequence_parallel:
            x = gather_from_sequence_parallel(x, self.tp)  # [b, s/tp, h] -> [b, s, h]
        else:
            x = copy_to_tp(x, self.tp)
        bias = None if self.skip_bias_add else self.bias
        out = linear(x, self.weight, bias)  # [..., out/tp]
        if self.gather_output:
            out = gather_from_tp(out, self.tp)  # [..., out]
        return (out, self.bias) if self.skip_bias_add else out


class RowParallelLinear(nn.Module):
    """``y = x A^T + b`` with ``A`` split by input columns; partial sums are reduced.

    Input ``[..., in/tp]`` (``input_is_parallel``) or ``[..., in]`` (scattered here); output
    ``[..., out]`` replicated, or ``[b, s/tp, out]`` with sequence parallelism. The bias is
    replicated and added once, after the reduction.
    """

    def __init__(self, in_features: int, out_features: int, tp: Group, bias: bool = True,
                 input_is_parallel: bool = True, sequence_parallel: bool = False,
                 skip_bias_add: bool = False, *, init_method: InitMethod = default_init,
                 params_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if sequence_parallel and not input_is_parallel:
            raise LayoutError("RowParallelLinear with sequence_parallel=True needs "
                              "input_is_parallel=True (its input comes from a column-parallel "
                              "layer)")
        self.tp, self.input_is_parallel = tp, input_is_parallel
        self.sequence_parallel, self.skip_bias_add = sequence_parallel, skip_bias_add
        self.in_features, self.out_features = in_features, out_features
        self.in_per_rank = _per_rank(in_features, tp, "in_features")
        self.weight = _parameter((out_features, in_features), 1, tp, init_method, params_dtype)
        self.bias = (_parameter((out_features,), None, tp, nn.init.zeros_, params_dtype,
                                sequence_parallel) if bias else None)

    def forward(self, x: torch.Tensor) -> LinearOutput:
        """Returns the output, or ``(output, bias)`` when ``skip_bias_add``."""
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.tp)
        partial = linear(x, self.weight)  # [..., out], this rank's share of the sum
        if self.sequence_parallel:
            out = reduce_scatter_to_sequence_parallel(partial, self.tp)  # [b, s/tp, out]
        else:
            out = reduce_from_tp(partial, self.tp)
        if self.skip_bias_add:
            return out, self.bias
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(nn.Module):
    """Embedding whose rows (the vocabulary) are split across the tensor-parallel group.

    Each rank looks up the ids in its range ``[rank * V/tp, (rank + 1) * V/tp)``, writes zeros
    for the others, and the partial results are summed. Input ``[b, s]`` ids; output
    ``[b, s, dim]`` (``[b, s/tp, dim]`` with sequence parallelism).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, tp: Group, *,
                 sequence_parallel: bool = False, init_method: InitMethod = default_init,
                 params_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tp, self.sequence_parallel = tp, sequence_parallel
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        per_rank = _per_rank(num_embeddings, tp, "num_embeddings (padded vocab size)")
        self.vocab_start, self.vocab_end = tp.rank * per_rank, (tp.rank + 1) * per_rank
        self.weight = _parameter((num_embeddings, embedding_dim), 0, tp, init_method,
                                 params_dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            out = F.embedding(ids, self.weight)
        else:
            outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
            local = (ids - self.vocab_start).masked_fill(outside, 0)
            out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence_parallel(out, self.tp)
        return reduce_from_tp(out, self.tp)
