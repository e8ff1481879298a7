"""The chunked, fused output projection + cross entropy equals the plain head and loss."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from megatron.model import build_model
from megatron.model.fused_loss import fused_head_cross_entropy
from megatron.parallel import ParallelLayout, ProcessGroups
from megatron.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron.utils import blas
from tests.distributed import run_distributed
from tests.model.conftest import tiny_inputs, tiny_spec

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _reference(x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """Independent oracle: full logits and torch's own cross entropy."""
    logits = x.reshape(-1, x.shape[-1]) @ w.t()
    per_token = torch.nn.functional.cross_entropy(logits, labels.reshape(-1), reduction="none")
    m = mask.reshape(-1)
    return (per_token * m).sum() / m.sum()


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 16, generator=gen)
    w = torch.randn(50, 16, generator=gen) * 0.5
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    mask = (torch.rand(3, 7, generator=gen) > 0.3).float()
    return x, w, labels, mask


@pytest.fixture(params=["openblas", "torch"])
def blas_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The head's fp32 products on each backend of ``megatron/utils/blas.py``."""
    monkeypatch.setenv(blas.ENV_OVERRIDE, request.param)
    blas.enabled.cache_clear()
    assert blas.enabled() is (request.param == "openblas")
    yield request.param
    blas.enabled.cache_clear()


@pytest.mark.parametrize("chunk", [1, 4, 21, 1000])
def test_loss_and_grads_match_full_logits(blas_backend: str, row_exp_backend: str,
                                          chunk: int) -> None:
    x, w, labels, mask = _inputs()
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _reference(x1, w1, labels, mask)
    (ref * 2.5).backward()  # a non-unit upstream gradient must scale both gradients
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fused_head_cross_entropy(x2, w2, labels, mask, ProcessGroups.single().tp,
                                   chunk_tokens=chunk)
    (out * 2.5).backward()
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    torch.testing.assert_close(w2.grad, w1.grad, **TOL)


def test_masked_tokens_get_no_gradient_and_empty_mask_is_zero() -> None:
    x, w, labels, mask = _inputs(1)
    mask[0] = 0.0
    x2 = x.clone().requires_grad_()
    fused_head_cross_entropy(x2, w, labels, mask, ProcessGroups.single().tp, 5).backward()
    assert torch.count_nonzero(x2.grad[0]) == 0
    zero = fused_head_cross_entropy(x, w, labels, torch.zeros_like(mask),
                                    ProcessGroups.single().tp)
    assert zero.item() == 0.0


def test_no_grad_forward_matches() -> None:
    x, w, labels, mask = _inputs(2)
    with torch.no_grad():
        out = fused_head_cross_entropy(x, w, labels, mask, ProcessGroups.single().tp, 4)
    torch.testing.assert_close(out, _reference(x, w, labels, mask), **TOL)


@pytest.mark.parametrize("tied", [True, False])
def test_built_model_fused_equals_plain(tied: bool) -> None:
    spec = tiny_spec(pos_emb="rotary", gpt_j_residual=True, tie_word_embeddings=tied)
    tokens, pos, labels = tiny_inputs()
    mask = torch.ones(labels.shape)
    mask[:, :3] = 0.0
    plain, plain_loss = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0)
    fused, fused_loss = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0,
                                    fused_loss=True, fused_loss_chunk_tokens=5)
    ref = plain_loss(plain((tokens, pos)), (labels, mask))
    ref.backward()
    out = fused_loss(fused((tokens, pos)), (labels, mask))
    out.backward()
    torch.testing.assert_close(out, ref, **TOL)
    grads = dict(plain.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, **TOL, msg=name)
    fused.eval()  # eval mode returns logits for generation and uses the plain loss
    logits = fused((tokens, pos))
    assert logits.shape == (2, 16, 64)
    torch.testing.assert_close(fused_loss(logits, (labels, mask)), ref.detach(), **TOL)


def test_bf16_autocast_close_to_fp32() -> None:
    x, w, labels, mask = _inputs(3)
    w2 = w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_head_cross_entropy(x, w2, labels, mask, ProcessGroups.single().tp, 4)
    out.backward()
    assert w2.grad.dtype == torch.float32  # fp32 master weights get fp32 gradients
    w1 = w.clone().requires_grad_()
    _reference(x, w1, labels, mask).backward()
    torch.testing.assert_close(out, _reference(x, w, labels, mask), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(w2.grad, w1.grad, atol=3e-2, rtol=3e-2)


def check_tp2_fused(rank: int, world_size: int) -> None:
    """Each rank holds half the vocabulary rows; loss and gradients equal the full ones."""
    groups = ProcessGroups.build(ParallelLayout(tp=2, pp=1, dp=1, rank=rank))
    x, w, labels, mask = _inputs(4)
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = _reference(x1, w1, labels, mask)
    ref.backward()
    half = w.shape[0] // 2
    local = w[rank * half:(rank + 1) * half].clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out = fused_head_cross_entropy(x2, local, labels, mask, groups.tp, chunk_tokens=6)
    out.backward()
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(local.grad, w1.grad[rank * half:(rank + 1) * half], **TOL)
    # The partial input gradients sum to the full one (copy_to_tp all-reduces them).
    torch.distributed.all_reduce(x2.grad, group=groups.tp.group)
    torch.testing.assert_close(x2.grad, x1.grad, **TOL)
    per_token = vocab_parallel_cross_entropy(x @ local.detach().t(), labels, groups.tp)
    plain = (per_token * mask).sum() / mask.sum()
    torch.testing.assert_close(out.detach(), plain, **TOL)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_tp2_fused_matches_full() -> None:
    run_distributed(check_tp2_fused, world_size=2)


def test_bf16_weights_keep_their_dtype_and_stay_close() -> None:
    """DeepSpeed's bf16 mode: bf16 weights and activations, no autocast."""
    x, w, labels, mask = _inputs(5)
    xb = x.bfloat16().requires_grad_()
    wb = w.bfloat16().requires_grad_()
    out = fused_head_cross_entropy(xb, wb, labels, mask, ProcessGroups.single().tp, 8)
    out.backward()
    assert xb.grad.dtype == wb.grad.dtype == torch.bfloat16
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    _reference(x1, w1, labels, mask).backward()
    torch.testing.assert_close(out, _reference(x, w, labels, mask), atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(wb.grad.float(), w1.grad, atol=1e-2, rtol=5e-2)
    torch.testing.assert_close(xb.grad.float(), x1.grad, atol=1e-2, rtol=5e-2)


@pytest.mark.parametrize("chunk", [4, 21])
def test_bf16_gemms_match_an_fp64_oracle(monkeypatch: pytest.MonkeyPatch, row_exp_backend: str,
                                         chunk: int) -> None:
    """Where bf16 GEMMs are native (GPUs, CPUs with AMX), both gradient GEMMs run in bf16,
    the softmax is computed over the bf16 logits in place, and each chunk's weight-gradient
    product is added into an fp32 sum; forced here on any CPU."""
    import megatron.model.fused_loss as fused

    monkeypatch.setattr(fused, "upcast_dtype", lambda dtype, device: None)
    x, w, labels, mask = _inputs(seed=3)
    x16, w16 = x.bfloat16(), w.bfloat16()
    x1, w1 = x16.double().requires_grad_(), w16.double().requires_grad_()
    ref = _reference(x1, w1, labels, mask)
    (ref * 2.5).backward()
    x2, w2 = x16.clone().requires_grad_(), w16.clone().requires_grad_()
    out = fused_head_cross_entropy(x2, w2, labels, mask, ProcessGroups.single().tp,
                                   chunk_tokens=chunk)
    (out * 2.5).backward()
    assert x2.grad.dtype == w2.grad.dtype == torch.bfloat16
    assert abs(out.item() - ref.item()) <= 1e-2 * abs(ref.item())
    for got, want in ((x2.grad, x1.grad), (w2.grad, w1.grad)):
        err = (got.double() - want).norm() / want.norm()
        assert err < 2e-2, err  # bf16 operands: between 1e-3 and 1e-2 expected


def test_chunk_size_follows_the_device() -> None:
    from megatron.model.fused_loss import (
        CUDA_CHUNK_TOKENS,
        DEFAULT_CHUNK_TOKENS,
        default_chunk_tokens,
    )

    assert default_chunk_tokens(torch.device("cpu")) == DEFAULT_CHUNK_TOKENS == 1024
    assert default_chunk_tokens(torch.device("cuda", 0)) == CUDA_CHUNK_TOKENS == 4096


def test_fp16_gradients_survive_a_realistic_token_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 (GPU configs with DeepSpeed loss scaling): 8192 tokens x 4096 vocabulary puts
    ``1 / (count * sum_exp)`` near 3e-8, below fp16's range; applied in forward it zeroed or
    garbled most gradients (74% / 87% relative error). The normalisation is deferred to
    backward and multiplied with the loss scale in fp32."""
    import megatron.model.fused_loss as fused

    monkeypatch.setattr(fused, "upcast_dtype", lambda dtype, device: None)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8192, 16, generator=gen).half()
    w = (torch.randn(4096, 16, generator=gen) * 0.01).half()  # flat logits: sum_exp ~ vocab
    labels = torch.randint(0, 4096, (8192,), generator=gen)
    mask = torch.ones(8192)
    x1, w1 = x.double().requires_grad_(), w.double().requires_grad_()
    ref = _reference(x1, w1, labels, mask)
    (ref * 1024.0).backward()  # DeepSpeed's fp16 loss scale reaches the head as grad_out
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fused_head_cross_entropy(x2, w2, labels, mask, ProcessGroups.single().tp,
                                   chunk_tokens=2048)
    (out * 1024.0).backward()
    assert abs(out.item() - ref.item()) <= 1e-3 * ref.item()
    for got, want in ((x2.grad, x1.grad), (w2.grad, w1.grad)):
        assert got.dtype == torch.float16
        err = (got.double() - want).norm() / want.norm()
        assert err < 1e-2, err


def test_confident_bf16_predictions_keep_their_target_gradient(
        monkeypatch: pytest.MonkeyPatch, row_exp_backend: str) -> None:
    """When the target holds almost all the probability, its gradient ``p - 1`` is a small
    difference of two numbers near 1; computed from bf16-rounded values it would vanish or
    double. The fused head computes it in fp32 and rounds once."""
    import megatron.model.fused_loss as fused

    monkeypatch.setattr(fused, "upcast_dtype", lambda dtype, device: None)
    gen = torch.Generator().manual_seed(7)
    w = torch.eye(64) + torch.randn(64, 64, generator=gen) * 0.01  # logits ~ x
    labels = torch.randint(0, 64, (40,), generator=gen)
    margin = 7 + 4 * torch.rand(40, 1, generator=gen)  # p(target) ~ 0.94 to 0.9999
    x = torch.nn.functional.one_hot(labels, 64) * margin + torch.randn(40, 64, generator=gen) * 0.3
    x16, w16 = x.bfloat16(), w.bfloat16()
    x1 = x16.double().requires_grad_()
    logits = x1 @ w16.double().t()
    p_target = logits.softmax(-1).gather(-1, labels[:, None])
    assert 0.9 < p_target.min() and p_target.max() < 0.9999
    torch.nn.functional.cross_entropy(logits, labels).backward()
    x2 = x16.clone().requires_grad_()
    fused_head_cross_entropy(x2, w16, labels, torch.ones(40), ProcessGroups.single().tp,
                             chunk_tokens=16).backward()
    err = (x2.grad.double() - x1.grad).norm() / x1.grad.norm()
    assert err < 2e-2, err


def test_transposed_weight_copy_equals_the_transpose() -> None:
    from megatron.model.fused_loss import _transposed

    w = torch.randn(1000, 24).bfloat16()
    for rows in (7, 256, 5000):
        got = _transposed(w, rows)
        assert got.is_contiguous() and torch.equal(got, w.t())


def test_blocked_add_equals_one_add() -> None:
    from megatron.model.fused_loss import _add_in_blocks

    total = torch.randn(1000, 8)
    part = torch.randn(1000, 8).bfloat16()
    want = total + part.float()
    for rows in (3, 4096):
        got = total.clone()
        _add_in_blocks(got, part, rows)
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_tokens_give_zero_gradients(dtype: torch.dtype) -> None:
    """The first chunk writes the weight gradient instead of adding to zeros; with no chunk
    at all it must still be zero, not uninitialised memory."""
    x = torch.zeros(0, 16, dtype=dtype, requires_grad=True)
    w = torch.randn(50, 16).to(dtype).requires_grad_()
    out = fused_head_cross_entropy(x, w, torch.zeros(0, dtype=torch.long), torch.zeros(0),
                                   ProcessGroups.single().tp)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(w.grad, torch.zeros_like(w))
