"""bf16 matmuls on CPUs without bf16 hardware: run them on the fp32 units instead.

A CPU without AVX512-BF16 or AMX has no bf16 multiply: torch falls back to a scalar loop
(0.9 GFLOP/s against 136 for fp32 with 2 AVX2 threads, measured on this project's machines),
which makes a bf16 training step a hundred times slower than fp32. A bf16 GEMM on bf16
hardware multiplies the bf16 inputs exactly, accumulates in fp32 and rounds the result to
bf16; upcasting the bf16 inputs to fp32, multiplying, and rounding the result to bf16 does
the same arithmetic on the fp32 units. So the choice is made by the device, not by a flag:
every place that multiplies bf16 tensors asks :func:`upcast_dtype` first.

:func:`linear` is ``F.linear`` with that rule; its backward recomputes nothing and keeps the
saved activations in bf16 (only the GEMMs see fp32 copies).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F


@functools.cache
def _cpu_has_bf16_gemm() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16_gemm(device: torch.device) -> bool:
    """Whether bf16 matmuls run on bf16 hardware here: always on GPUs; on CPUs only with
    AVX512-BF16 or AMX (what oneDNN reports)."""
    return device.type != "cpu" or _cpu_has_bf16_gemm()


def upcast_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
    """fp32 when a ``dtype`` matmul on ``device`` would take the slow bf16 fallback, else None
    (run it as it is)."""
    if dtype == torch.bfloat16 and not native_bf16_gemm(device):
        return torch.float32
    return None


class _UpcastLinear(torch.autograd.Function):
    """``F.linear`` computed in fp32 on bf16 inputs; outputs and gradients stay bf16."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        g = grad.float()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(g, weight.float()).to(x.dtype)
        if ctx.needs_input_grad[1]:
            g2 = g.reshape(-1, g.shape[-1])
            grad_w = torch.matmul(g2.t(), x.reshape(-1, x.shape[-1]).float()).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.reshape(-1, g.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, on the fp32 units where bf16 GEMMs are slow."""
    if x.dtype == weight.dtype and upcast_dtype(x.dtype, x.device) is not None:
        return _UpcastLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
