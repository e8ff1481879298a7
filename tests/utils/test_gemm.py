"""bf16 matmuls on the fp32 units where the CPU has no bf16 GEMM (megatron/utils/gemm.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron.model.kernels import sdpa_attention
from megatron.utils import gemm

BF16_ULP = 2.0**-7  # relative spacing of bf16 numbers


@pytest.fixture
def no_bf16_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gemm, "_cpu_has_bf16_gemm", lambda: False)


@pytest.fixture
def bf16_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gemm, "_cpu_has_bf16_gemm", lambda: True)


def _bf16(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).bfloat16().requires_grad_()


def test_upcast_dtype_only_for_bf16_on_cpus_without_it(no_bf16_hardware: None) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert gemm.upcast_dtype(torch.bfloat16, cpu) is torch.float32
    assert gemm.upcast_dtype(torch.float32, cpu) is None
    assert gemm.upcast_dtype(torch.float16, cpu) is None
    assert gemm.upcast_dtype(torch.bfloat16, cuda) is None
    assert gemm.native_bf16_gemm(cuda)


def test_upcast_dtype_none_with_bf16_hardware(bf16_hardware: None) -> None:
    assert gemm.upcast_dtype(torch.bfloat16, torch.device("cpu")) is None


def test_linear_is_the_fp32_product_rounded_to_bf16(no_bf16_hardware: None) -> None:
    x, w, b = _bf16(3, 5, 16, seed=0), _bf16(8, 16, seed=1), _bf16(8, seed=2)
    out = gemm.linear(x, w, b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.linear(x.float(), w.float(), b.float()).bfloat16(),
                               atol=0, rtol=0)

    grad = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(3)).bfloat16()
    out.backward(grad)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    F.linear(x32, w32, b32).backward(grad.float())
    for got, want in ((x.grad, x32.grad), (w.grad, w32.grad), (b.grad, b32.grad)):
        assert got.dtype == torch.bfloat16
        # Both are fp32 sums rounded once to bf16: at most one bf16 step apart.
        torch.testing.assert_close(got.float(), want, rtol=BF16_ULP, atol=1e-6)


def test_linear_without_bias_and_frozen_weight(no_bf16_hardware: None) -> None:
    x, w = _bf16(4, 16, seed=4), _bf16(8, 16, seed=5).detach()
    out = gemm.linear(x, w)
    out.sum().backward()
    assert w.grad is None
    torch.testing.assert_close(x.grad.float(), w.float().sum(0).expand(4, 16),
                               rtol=BF16_ULP, atol=1e-6)


def test_linear_leaves_native_and_fp32_matmuls_alone(bf16_hardware: None) -> None:
    x, w = _bf16(4, 16, seed=6), _bf16(8, 16, seed=7)
    assert "Upcast" not in type(gemm.linear(x, w).grad_fn).__name__
    x32, w32 = x.detach().float(), w.detach().float()
    torch.testing.assert_close(gemm.linear(x32, w32), F.linear(x32, w32), atol=0, rtol=0)


def test_sdpa_runs_bf16_in_fp32(no_bf16_hardware: None) -> None:
    q, k, v = (_bf16(1, 2, 8, 4, seed=s) for s in (8, 9, 10))
    out = sdpa_attention(q, k, v, causal=True)
    assert out.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(out, want.bfloat16(), atol=0, rtol=0)
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
