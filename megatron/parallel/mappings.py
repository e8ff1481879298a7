"""Autograd communication functions for tensor and sequence parallelism.

Model code calls these by name and never calls ``torch.distributed`` itself. Each function
pairs a forward collective with the backward collective that makes gradients correct:

=====================================  ==============================  ==========================
function                               forward                         backward
=====================================  ==============================  ==========================
``copy_to_tp``                         identity                        all-reduce
``reduce_from_tp``                     all-reduce                      identity
``scatter_to_tp``                      keep own slice of last dim      all-gather last dim
``gather_from_tp``                     all-gather last dim             keep own slice
``scatter_to_sequence_parallel``       keep own slice of dim 1         all-gather dim 1
``gather_from_sequence_parallel``      all-gather dim 1                reduce-scatter dim 1
``reduce_scatter_to_sequence_parallel``  reduce-scatter dim 1          all-gather dim 1
=====================================  ==============================  ==========================

Activations are ``[b, s, h]`` so the sequence dimension is 1. With ``tp.size == 1`` every
function returns its input unchanged and nothing is communicated, so the same model runs in a
single process without ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from megatron.parallel.errors import LayoutError
from megatron.parallel.groups import Group

SEQ_DIM = 1
"""Sequence dimension of ``[b, s, h]`` activations."""


def _all_reduce(x: torch.Tensor, tp: Group) -> torch.Tensor:
    out = x.clone()  # never reduce into a tensor autograd may still need
    dist.all_reduce(out, group=tp.group)
    return out


def _check_divisible(x: torch.Tensor, dim: int, tp: Group) -> None:
    if x.shape[dim] % tp.size != 0:
        raise LayoutError(f"dimension {dim} of a tensor with shape {tuple(x.shape)} is not "
                          f"divisible by the tensor-parallel size {tp.size}")


def split_along(x: torch.Tensor, dim: int, tp: Group) -> torch.Tensor:
    """This rank's contiguous block of ``x`` along ``dim`` (no communication)."""
    if tp.size == 1:
        return x
    _check_divisible(x, dim, tp)
    return x.chunk(tp.size, dim=dim)[tp.rank].contiguous()


def gather_along(x: torch.Tensor, dim: int, tp: Group) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` in rank order (not differentiable)."""
    if tp.size == 1:
        return x
    front = x.movedim(dim, 0).contiguous()
    out = front.new_empty((front.shape[0] * tp.size, *front.shape[1:]))
    dist.all_gather_into_tensor(out, front, group=tp.group)
    return out.movedim(0, dim).contiguous()


def reduce_scatter_along(x: torch.Tensor, dim: int, tp: Group) -> torch.Tensor:
    """Sum ``x`` over ranks and keep this rank's block along ``dim`` (not differentiable)."""
    if tp.size == 1:
        return x
    _check_divisible(x, dim, tp)
    front = x.movedim(dim, 0).contiguous()
    out = front.new_empty((front.shape[0] // tp.size, *front.shape[1:]))
    dist.reduce_scatter_tensor(out, front, group=tp.group)
    return out.movedim(0, dim).contiguous()


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, tp: Group) -> torch.Tensor:
        ctx.tp = tp
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_reduce(grad, ctx.tp), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, tp: Group) -> torch.Tensor:
        return _all_reduce(x, tp)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _Split(torch.autograd.Function):
    """Forward: keep own block along ``dim``; backward: all-gather along ``dim``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, tp: Group) -> torch.Tensor:
        ctx.dim, ctx.tp = dim, tp
        return split_along(x, dim, tp)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return gather_along(grad, ctx.dim, ctx.tp), None, None


class _Gather(torch.autograd.Function):
    """Forward: all-gather along ``dim``; backward: reduce-scatter or keep own block."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, tp: Group, reduce_grad: bool) -> torch.Tensor:
        ctx.dim, ctx.tp, ctx.reduce_grad = dim, tp, reduce_grad
        return gather_along(x, dim, tp)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        if ctx.reduce_grad:
            return reduce_scatter_along(grad, ctx.dim, ctx.tp), None, None, None
        return split_along(grad, ctx.dim, ctx.tp), None, None, None


class _ReduceScatter(torch.autograd.Function):
    """Forward: reduce-scatter along ``dim``; backward: all-gather along ``dim``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, tp: Group) -> torch.Tensor:
        ctx.dim, ctx.tp = dim, tp
        return reduce_scatter_along(x, dim, tp)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return gather_along(grad, ctx.dim, ctx.tp), None, None


def copy_to_tp(x: torch.Tensor, tp: Group) -> torch.Tensor:
    """Enter a tensor-parallel region: identity forward, all-reduce of the gradient."""
    return x if tp.size == 1 else _CopyToTP.apply(x, tp)


def reduce_from_tp(x: torch.Tensor, tp: Group) -> torch.Tensor:
    """Leave a tensor-parallel region by summing partial results: all-reduce forward."""
    return x if tp.size == 1 else _ReduceFromTP.apply(x, tp)


def scatter_to_tp(x: torch.Tensor, tp: Group) -> torch.Tensor:
    """Keep this rank's block of the last dimension; gradients are gathered back."""
    return x if tp.size == 1 else _Split.apply(x, -1, tp)


def gather_from_tp(x: torch.Tensor, tp: Group) -> torch.Tensor:
    """All-gather the last dimension; the gradient keeps only this rank's block."""
    return x if tp.size == 1 else _Gather.apply(x, -1, tp, False)


def scatter_to_sequence_parallel(x: torch.Tensor, tp: Group) -> torch.Tensor:
    """Keep this rank's block of the sequence (dim 1); gradients are all-gathered."""
    return x if tp.size == 1 else _Split.apply(x, SEQ_DIM, tp)


def gather_from_sequence_parallel(
    x: torch.Tensor, tp: Group, tensor_parallel_output_grad: bool = True
) -> torch.Tensor:
    """All-gather the sequence (dim 1).

    Args:
        x: ``[b, s/tp, h]`` shard.
        tp: tensor-parallel group.
        tensor_parallel_output_grad: True when the gathered tensor feeds a tensor-parallel
            computation (e.g. a column-parallel linear), so each rank holds only a partial
            gradient and the backward must reduce-scatter. False when the consumer is
            replicated, so the backward just keeps this rank's block.
    """
    if tp.size == 1:
        return x
    return _Gather.apply(x, SEQ_DIM, tp, tensor_parallel_output_grad)


def reduce_scatter_to_sequence_parallel(x: torch.Tensor, tp: Group) -> torch.Tensor:
    """Sum partial ``[b, s, h]`` results and keep this rank's ``[b, s/tp, h]`` block."""
    return x if tp.size == 1 else _ReduceScatter.apply(x, SEQ_DIM, tp)


def all_reduce_sequence_parallel_grads(params: Iterable[torch.nn.Parameter], tp: Group) -> None:
    """Sum the gradients of replicated parameters used inside a sequence-parallel region.

    With sequence parallelism each rank applies replicated parameters (norms, the row-parallel
    bias) to its own slice of the sequence, so each rank's gradient is partial. Call this
    after backward and before the optimizer step on the parameters whose
    ``sequence_parallel`` attribute is True.
    """
    if tp.size == 1:
        return
    for p in params:
        if getattr(p, "sequence_parallel", False) and p.grad is not None:
            dist.all_reduce(p.grad, group=tp.group)


def register_sequence_parallel_grad_hooks(module: torch.nn.Module, tp: Group) -> int:
    """Make every ``sequence_parallel`` parameter's gradient the sum over the tp group.

    The engine-independent alternative to ``all_reduce_sequence_parallel_grads``: a hook on
    each such parameter all-reduces its gradient inside autograd, before it is accumulated
    into ``.grad``, so it also works when DeepSpeed's pipeline engine or ZeRO consume the
    gradients before user code could run. Call once, after building the model.

    Returns:
        How many parameters got a hook (0 when ``tp.size == 1``).
    """
    if tp.size == 1:
        return 0
    params = [p for p in module.parameters() if getattr(p, "sequence_parallel", False)]
    for p in params:
        p.register_hook(lambda grad: _all_reduce(grad, tp))
    return len(params)
