"""Output projection fused with cross entropy, computed in chunks of tokens.

The plain head materialises fp32 logits ``[b, s, V]`` (for a 50k vocabulary and 4 x 1024
tokens that is 800 MB, plus as much again for the softmax kept for backward and the gradient
of the logits). Here the tokens are processed ``chunk_tokens`` at a time: each chunk's
logits are computed, reduced to its loss, and turned at once into its contributions to the
gradients of the hidden states and of the head weight. Only those gradients survive the
forward pass, so peak memory holds one chunk of logits and no logits are recomputed.

Computing gradients in forward needs the per-token weights, so the function returns the
final scalar ``sum(loss * mask) / count``. The gradients are stored without the ``1 / count``
factor, and backward applies it together with the incoming scalar, in fp32: with fp16 the
upstream scalar is DeepSpeed's loss scale, and a per-token ``1 / (count * sum_exp)`` applied
in forward (~1e-9 for 16k tokens and a 50k vocabulary) underflowed fp16 to zero.

The three vocabulary-wide products go through ``megatron.utils.blas.mm``: OpenBLAS on AMD
CPUs, where torch's MKL ran the forward one ~15% slower, torch everywhere else.

With tensor parallelism the weight holds this rank's vocabulary rows and only
``[chunk]``-sized statistics are all-reduced, as in ``vocab_parallel_cross_entropy``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from megatron.parallel.groups import Group
from megatron.utils.blas import mm
from megatron.utils.gemm import upcast_dtype

DEFAULT_CHUNK_TOKENS = 1024
"""Tokens per chunk on a CPU: 1024 x 50k fp32 logits is ~200 MB. On 2 CPU cores the head's
three GEMMs ran ~10% faster than with 256 (the [256, 50k] products are too thin to reach the
GEMM peak) and 2048 was no faster (tools/benchmark.py, 19M and pythia-70m shapes)."""

CUDA_CHUNK_TOKENS = 4096
"""Tokens per chunk on a GPU: 4096 x 50k fp32 logits is ~800 MB, small beside a GPU's memory,
and each chunk adds its ``[V, h]`` weight-gradient part into the fp32 sum (one pass over that
sum per chunk), so fewer, larger chunks are faster there."""


def default_chunk_tokens(device: torch.device) -> int:
    """The chunk size for ``device`` when none is configured."""
    return CUDA_CHUNK_TOKENS if device.type == "cuda" else DEFAULT_CHUNK_TOKENS


def _all_reduce(x: torch.Tensor, tp: Group, op: Any = None) -> None:
    if tp.size > 1:
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM, group=tp.group)


def _chunk_loss_and_grad(
        x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
        tp: Group, need_grad: bool, out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted loss sum of one chunk, ``d(loss sum) / d(logits)`` up to a row scale, the scale.

    x ``[n, h]``, weight ``[v, h]`` (this rank's rows), labels and mask ``[n]`` (fp32);
    ``out``: a buffer for the logits (reused across chunks: a fresh 200 MB tensor page-faults
    in again each time on the CPU). The gradient of token t's row is ``scale[t] * g[t]``; the
    caller applies the scale to the small ``[n, h]`` operands instead of this ``[n, v]`` one,
    which saves a pass over the largest tensor of the step.
    """
    logits = mm(x, weight.t(), out=out).float()  # [n, v]
    v = logits.shape[-1]
    row_max = logits.amax(dim=-1)  # [n]; max(dim) also finds indices: 3x slower on a CPU
    _all_reduce(row_max, tp, dist.ReduceOp.MAX)
    logits.sub_(row_max.unsqueeze(-1))
    start = tp.rank * v
    outside = (labels < start) | (labels >= start + v)  # target on another rank
    local = (labels - start).masked_fill(outside, 0)
    target = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
    _all_reduce(target, tp)
    exp = logits.exp_()  # reuse the chunk's buffer
    sum_exp = exp.sum(dim=-1)
    _all_reduce(sum_exp, tp)
    loss = ((sum_exp.log() - target) * mask).sum()
    if need_grad:
        # d loss_t / d logit_j = (exp_j - [j == label_t] * sum_exp) * weight_t / sum_exp.
        exp.scatter_add_(-1, local.unsqueeze(-1), -(sum_exp * (~outside)).unsqueeze(-1))
    return loss, exp, mask / sum_exp


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on (bf16 with fp32 master weights), else x's;
    fp32 instead of bf16 where bf16 GEMMs are slow (more precise, never less)."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return upcast_dtype(dtype, x.device) or dtype


def _add_chunk_grads(g: torch.Tensor, scale: torch.Tensor, x_c: torch.Tensor, w: torch.Tensor,
                     grad_x: torch.Tensor | None, grad_w: torch.Tensor | None,
                     start: int) -> None:
    """Write the chunk's rows of ``grad_x`` and add its part of ``grad_w`` (fp32).

    The gradient of the logits is ``scale[:, None] * g`` (``g`` fp32). The row scale is applied
    to the ``[n, h]`` operands (the product's rows, or ``x_c``'s rows) rather than to ``g``,
    which saves a pass over the largest tensor of the step. Both GEMMs run in the compute
    dtype: an fp32 ``g`` sent them to the GPU's fp32 units. Each chunk's low-precision
    weight-gradient product is added into the fp32 sum. fp16 is the exception: an unscaled
    ``g`` reaches the vocabulary size (past fp16's range beyond 65k entries) and the scale
    (down to ``1 / vocab``) is subnormal there, so ``g`` is scaled before its cast, to
    ``softmax - onehot`` in [-1, 1].
    """
    scale = scale.unsqueeze(-1)
    if w.dtype == torch.float16:
        g, scale = g.mul_(scale).to(w.dtype), None
    elif g.dtype != w.dtype:
        g = g.to(w.dtype)  # one pass, shared by both GEMMs
    if grad_x is not None:
        rows = grad_x[start:start + g.shape[0]]
        mm(g, w, out=rows)
        if scale is not None:
            rows.mul_(scale.to(rows.dtype))
    if grad_w is not None:
        scaled_x = x_c if scale is None else x_c * scale.to(x_c.dtype)
        if g.dtype == grad_w.dtype:
            mm(g.t(), scaled_x, out=grad_w, accumulate=True)
        else:
            grad_w.add_(torch.matmul(g.t(), scaled_x))


class _FusedHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor, count: torch.Tensor, tp: Group,
                chunk_tokens: int) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = _compute_dtype(x)
        w = weight.to(dtype)  # one copy when the compute dtype differs, else none
        grad_x = torch.empty(x.shape, dtype=dtype, device=x.device) if need_x else None
        # Accumulate the weight gradient in fp32 across chunks, whatever the weight dtype.
        grad_w = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                  if need_w else None)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        need_grad, buffer = need_x or need_w, None
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.shape[0], chunk_tokens):
                end = min(start + chunk_tokens, x.shape[0])
                x_c = x[start:end].to(dtype)
                out = None if buffer is None else buffer[: end - start]
                loss, grad_logits, scale = _chunk_loss_and_grad(
                    x_c, w, labels[start:end], mask[start:end], tp, need_grad, out)
                total += loss
                if need_grad:
                    _add_chunk_grads(grad_logits, scale, x_c, w, grad_x, grad_w, start)
                # Reuse the product's buffer; an fp32 copy of a bf16 product is freed
                # instead, before the next chunk's logits exist.
                buffer = grad_logits if grad_logits.dtype == dtype else None
                del grad_logits
        # Kept without the 1 / count factor (grad_w in fp32) until backward: see the module
        # docstring.
        ctx.grads, ctx.count = (grad_x, grad_w), count
        ctx.dtypes = (x.dtype, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad_x, grad_w), (x_dtype, w_dtype) = ctx.grads, ctx.dtypes
        ctx.grads = None
        factor = grad_out.to(torch.float32) / ctx.count
        grad_x = None if grad_x is None else _times(grad_x, factor, x_dtype)
        grad_w = None if grad_w is None else _times(grad_w, factor, w_dtype)
        return grad_x, grad_w, None, None, None, None, None


def _times(grad: torch.Tensor, factor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grad * factor`` computed in fp32 and rounded once to ``dtype``, as the unfused head's
    gradients are; an fp32 buffer (ours alone) is scaled in place, not copied."""
    scaled = grad.mul_(factor) if grad.dtype == torch.float32 else grad.float().mul_(factor)
    return scaled.to(dtype)


def fused_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             loss_mask: torch.Tensor, tp: Group,
                             chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean cross entropy over ``loss_mask`` of ``hidden @ weight.T``, without full logits.

    Args:
        hidden: ``[b, s, h]`` head input (already copied to the tensor-parallel region).
        weight: ``[V/tp, h]`` this rank's rows of the output projection.
        labels: ``[b, s]`` int64 target ids in ``[0, V)``.
        loss_mask: ``[b, s]``; tokens with 0 do not count.
        tp: tensor-parallel group (size 1: plain cross entropy).
        chunk_tokens: tokens per chunk (bounds the memory of the logits); None takes
            ``default_chunk_tokens`` of the device.

    Returns:
        scalar fp32 ``sum(loss * mask) / max(sum(mask), 1)``, equal to the unfused head
        followed by ``vocab_parallel_cross_entropy``.
    """
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(hidden.device)
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    mask = loss_mask.reshape(-1).float()
    count = mask.sum().clamp(min=1.0)
    flat = hidden.reshape(-1, hidden.shape[-1])  # [b*s, h]
    return _FusedHeadCrossEntropy.apply(flat, weight, labels.reshape(-1), mask, count, tp,
                                        chunk_tokens)


def make_fused_loss_fn(model: Any, tp: Group, plain_loss_fn: Any,
                       chunk_tokens: int | None = None) -> Any:
    """``loss_fn(output, (labels, loss_mask))`` for a model built with ``fused_loss=True``.

    In training mode such a model returns the head input ``[b, s, h]`` and this applies the
    head and the loss chunk by chunk; in eval mode it returns logits (so generation and
    evaluation see the usual output) and ``plain_loss_fn`` is used.

    Args:
        model: the ``GPTModel`` (read for ``training``, ``head_weight``).
        tp: tensor-parallel group.
        plain_loss_fn: the unfused ``loss_fn(logits, target)``.
        chunk_tokens: tokens per chunk; None: the device's default.
    """

    def loss_fn(output: torch.Tensor, target: Any) -> torch.Tensor:
        if not model.training:
            return plain_loss_fn(output, target)
        labels, loss_mask = target
        return fused_head_cross_entropy(output, model.head_weight, labels, loss_mask, tp,
                                        chunk_tokens)

    return loss_fn
