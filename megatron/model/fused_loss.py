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

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from megatron.parallel.groups import Group
from megatron.utils.blas import mm
from megatron.utils.gemm import upcast_dtype
from megatron.utils.row_exp import exp_rows_

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
        tp: Group, need_grad: bool, bufs: _Buffers,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted loss sum of one chunk, ``d(loss sum) / d(logits)`` up to a row scale, the scale.

    x ``[n, h]``, weight ``[v, h]`` (this rank's rows), labels and mask ``[n]`` (fp32). The
    logits go to ``bufs`` (see :class:`_Buffers`) and become ``exp(logit - max)`` in place,
    in one pass on a CPU (``megatron.utils.row_exp``). The gradient of token t's row is
    ``scale[t] * g[t]``; the caller applies the scale to the small ``[n, h]`` operands
    instead of this ``[n, v]`` one, which saves a pass over the largest tensor of the step.
    """
    n = x.shape[0]
    w_t = weight.t() if bufs.weight_t is None else bufs.weight_t
    logits = mm(x, w_t, out=bufs.logits[:n])  # [n, v]
    if bufs.work is not bufs.logits:
        logits = bufs.work[:n].copy_(logits)
    v = logits.shape[-1]
    start = tp.rank * v
    outside = (labels < start) | (labels >= start + v)  # target on another rank
    # Each row's target entry as an index into the flat chunk: gather_ and scatter_ on a
    # bf16 CPU tensor copied the whole chunk to fp32 and back (60-80 ms per chunk).
    at = (labels - start).masked_fill(outside, 0)
    at += torch.arange(0, n * v, v, device=at.device)
    flat = logits.view(-1)
    target = flat[at].float().masked_fill(outside, 0.0)
    _all_reduce(target, tp)
    row_max = None
    if tp.size > 1:  # the exponentials need the maximum over every rank's vocabulary
        row_max = logits.amax(dim=-1).float()  # max(dim) also finds indices: 3x slower
        _all_reduce(row_max, tp, dist.ReduceOp.MAX)
    row_max, sum_exp = exp_rows_(logits, row_max)  # logits now hold exp(logit - max)
    _all_reduce(sum_exp, tp)
    loss = ((sum_exp.log() + row_max - target) * mask).sum()
    if need_grad:
        # d loss_t / d logit_j = (exp_j - [j == label_t] * sum_exp) * weight_t / sum_exp. The
        # target's entry is computed in fp32 and rounded once: exp_t - sum_exp is small when
        # the prediction is confident, and a rounded exp_t would swamp it.
        at_target = ((target - row_max).exp() - sum_exp).to(logits.dtype)
        flat[at] = torch.where(outside, flat[at], at_target)
    return loss, logits, mask / sum_exp


@dataclass
class _Buffers:
    """The chunk-sized tensors of one forward pass, allocated once and reused by every chunk.

    On a CPU a fresh tensor of this size (100-200 MB) is mapped and page-faulted in again each
    time it is created: with bf16 on AMX, creating the logits, their fp32 copy and the bf16
    softmax gradient afresh per chunk took 3 x 50-60 ms of a 150 ms chunk, longer than its
    forward GEMM.

    Attributes:
        logits: ``[chunk, v]`` in the compute dtype: the product's output, and the softmax
            gradient the two gradient GEMMs read.
        work: where the softmax is computed: ``logits`` itself, except under fp16, whose
            gradient must be scaled in fp32 before it is cast (see ``_add_chunk_grads``).
        grad_w_part: ``[v, h]`` in the compute dtype: one chunk's weight-gradient product
            before it is added to the fp32 sum; None in fp32.
        weight_t: the weight as a contiguous ``[h, v]`` copy, for bf16 on a CPU: oneDNN's
            AMX products ``x @ weight.T`` and ``weight.T @ g.T`` ran at 880 and 714 GFLOP/s
            with it against 621 and 392 with the transposed view of ``[v, h]`` (1024 x 512
            x 50304, 2 cores); the copy costs ~30 ms once per step. None elsewhere.
    """

    logits: torch.Tensor
    work: torch.Tensor
    grad_w_part: torch.Tensor | None
    weight_t: torch.Tensor | None

    @classmethod
    def allocate(cls, rows: int, weight: torch.Tensor, need_w: bool) -> _Buffers:
        v, dtype = weight.shape[0], weight.dtype
        logits = torch.empty((rows, v), dtype=dtype, device=weight.device)
        fp16 = dtype == torch.float16
        work = torch.empty((rows, v), device=weight.device) if fp16 else logits
        part = torch.empty_like(weight) if dtype != torch.float32 and need_w else None
        cpu_bf16 = weight.device.type == "cpu" and dtype == torch.bfloat16
        return cls(logits, work, part, _transposed(weight) if cpu_bf16 else None)


def _transposed(weight: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """``weight.T`` as a contiguous tensor, copied ``rows`` rows at a time: one
    ``copy_`` of the whole transposed view took 65 ms for ``[50304, 512]`` bf16, this 27."""
    out = torch.empty((weight.shape[1], weight.shape[0]), dtype=weight.dtype,
                      device=weight.device)
    for start in range(0, weight.shape[0], rows):
        out[:, start:start + rows].copy_(weight[start:start + rows].t())
    return out


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on (bf16 with fp32 master weights), else x's;
    fp32 instead of bf16 where bf16 GEMMs are slow (more precise, never less)."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return upcast_dtype(dtype, x.device) or dtype


def _add_chunk_grads(g: torch.Tensor, scale: torch.Tensor, x_c: torch.Tensor, w: torch.Tensor,
                     grad_x: torch.Tensor | None, grad_w: torch.Tensor | None,
                     start: int, bufs: _Buffers) -> None:
    """Write the chunk's rows of ``grad_x`` and add its part of ``grad_w`` (fp32; the first
    chunk, ``start == 0``, writes it).

    The gradient of the logits is ``scale[:, None] * g`` (``g`` in the compute dtype, fp32
    under fp16). The row scale is applied to the ``[n, h]`` operands (the product's rows, or
    ``x_c``'s rows) rather than to ``g``, which saves a pass over the largest tensor of the
    step. Both GEMMs run in the compute dtype: an fp32 ``g`` sent them to the GPU's fp32
    units. Each chunk's low-precision weight-gradient product is added into the fp32 sum.
    fp16 is the exception: an unscaled ``g`` reaches the vocabulary size (past fp16's range
    beyond 65k entries) and the scale (down to ``1 / vocab``) is subnormal there, so ``g`` is
    scaled in fp32 before its cast, to ``softmax - onehot`` in [-1, 1].
    """
    scale = scale.unsqueeze(-1)
    if w.dtype == torch.float16:
        g, scale = g.mul_(scale), None
    if g.dtype != w.dtype:  # fp16: one cast, shared by both GEMMs, into the logits' buffer
        g = bufs.logits[:g.shape[0]].copy_(g)
    if grad_x is not None:
        rows = grad_x[start:start + g.shape[0]]
        if bufs.weight_t is None:
            mm(g, w, out=rows)
        else:  # [h, n], transposed into the rows: see _Buffers.weight_t
            rows.copy_(torch.mm(bufs.weight_t, g.t()).t())
        if scale is not None:
            rows.mul_(scale.to(rows.dtype))
    if grad_w is not None:
        scaled_x = x_c if scale is None else x_c * scale.to(x_c.dtype)
        if bufs.grad_w_part is None:
            mm(g.t(), scaled_x, out=grad_w, accumulate=start > 0)
        else:
            part = mm(g.t(), scaled_x, out=bufs.grad_w_part)
            if start > 0:
                _add_in_blocks(grad_w, part)
            else:
                grad_w.copy_(part)


def _add_in_blocks(total: torch.Tensor, part: torch.Tensor, rows: int = 4096) -> None:
    """``total += part`` for an fp32 ``total`` and a low-precision ``part``, ``rows`` rows at a
    time: in one call torch converts the whole ``part`` into a fresh fp32 tensor first
    (47 ms for ``[50304, 512]`` on a CPU, against 17 ms in blocks that stay in cache). A GPU
    converts inside the kernel: one launch there."""
    if total.device.type != "cpu":
        rows = max(1, total.shape[0])
    for start in range(0, total.shape[0], rows):
        total[start:start + rows].add_(part[start:start + rows])


class _FusedHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor, count: torch.Tensor, tp: Group,
                chunk_tokens: int) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = _compute_dtype(x)
        w = weight.to(dtype)  # one copy when the compute dtype differs, else none
        grad_x = torch.empty(x.shape, dtype=dtype, device=x.device) if need_x else None
        # Accumulate the weight gradient in fp32 across chunks, whatever the weight dtype;
        # the first chunk writes it (no zero-fill pass over [v, h]), unless there is none.
        new = torch.empty if x.shape[0] else torch.zeros
        grad_w = new(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        need_grad = need_x or need_w
        bufs = _Buffers.allocate(min(chunk_tokens, x.shape[0]), w, need_w)
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.shape[0], chunk_tokens):
                end = min(start + chunk_tokens, x.shape[0])
                x_c = x[start:end].to(dtype)
                loss, grad_logits, scale = _chunk_loss_and_grad(
                    x_c, w, labels[start:end], mask[start:end], tp, need_grad, bufs)
                total += loss
                if need_grad:
                    _add_chunk_grads(grad_logits, scale, x_c, w, grad_x, grad_w, start, bufs)
        del bufs
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
