"""The compiled exp-and-sum kernel against a float64 oracle, and its torch fallback."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from megatron.utils import row_exp


def _oracle(x: torch.Tensor, row_max: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    d = x.double()
    m = d.amax(dim=-1) if row_max is None else row_max.double()
    e = (d - m[:, None]).exp()
    return m, e, e.sum(dim=-1)


def _logits(rows: int, cols: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=gen) * 6).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exp_and_sums_match_float64(row_exp_backend: str, dtype: torch.dtype) -> None:
    x = _logits(37, 1000, dtype)
    m, e, s = _oracle(x)
    got = x.clone()
    row_max, sums = row_exp.exp_rows_(got)
    assert got.dtype == dtype and sums.dtype == row_max.dtype == torch.float32
    assert torch.equal(row_max.double(), m)  # the maximum of the rows is exact
    torch.testing.assert_close(sums.double(), s, rtol=1e-6, atol=0)
    if dtype == torch.bfloat16:  # the exponentials are rounded once, to nearest
        assert (got.double() - e).abs().max() <= (e * 2.0**-8).max()
        assert (got != e.to(dtype)).float().mean() < 0.01
    else:
        torch.testing.assert_close(got.double(), e, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_given_maximum_is_used_instead_of_the_rows_own(row_exp_backend: str,
                                                         dtype: torch.dtype) -> None:
    """Under tensor parallelism the maximum is taken over every rank's vocabulary."""
    x = _logits(5, 300, dtype, seed=1)
    given = x.float().amax(dim=-1) + torch.tensor([0.0, 1.0, 2.5, 7.0, 30.0])
    _, e, s = _oracle(x, given)
    got = x.clone()
    row_max, sums = row_exp.exp_rows_(got, given)
    assert torch.equal(row_max, given)
    torch.testing.assert_close(sums.double(), s, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.double(), e, rtol=2.0**-8, atol=1e-30)


def test_rows_of_a_wider_tensor_leave_the_rest_alone(row_exp_backend: str) -> None:
    """A view of some columns (row stride larger than the row) is computed in place."""
    wide = _logits(9, 70, torch.float32, seed=2)
    before = wide.clone()
    _, e, s = _oracle(wide[:, 10:60])
    _, sums = row_exp.exp_rows_(wide[:, 10:60])
    torch.testing.assert_close(wide[:, 10:60].double(), e, rtol=1e-5, atol=1e-30)
    torch.testing.assert_close(sums.double(), s, rtol=1e-6, atol=0)
    assert torch.equal(wide[:, :10], before[:, :10])
    assert torch.equal(wide[:, 60:], before[:, 60:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_logits_make_their_row_sum_nan(row_exp_backend: str, dtype: torch.dtype) -> None:
    """NaN must reach the loss, so the trainer's guard sees it; -inf is an ordinary zero."""
    x = _logits(4, 50, dtype, seed=3)
    x[0, 5] = float("nan")
    x[1, 7] = float("inf")
    x[2, 9] = float("-inf")
    got = x.clone()
    _, sums = row_exp.exp_rows_(got)
    assert math.isnan(sums[0]) and math.isnan(sums[1])
    assert math.isfinite(sums[2]) and got[2, 9] == 0
    torch.testing.assert_close(sums[2:].double(), _oracle(x[2:])[2], rtol=1e-6, atol=0)


def test_very_negative_differences_underflow_to_zero(row_exp_backend: str) -> None:
    x = torch.tensor([[0.0, -10.0, -79.0, -81.0, -200.0, -1e30]])
    got = x.clone()
    _, sums = row_exp.exp_rows_(got)
    want = x.double().exp()
    want[want < math.exp(-80)] = 0
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-34)
    assert sums.item() == pytest.approx(1 + math.exp(-10), rel=1e-6)


def test_the_result_does_not_depend_on_the_thread_count() -> None:
    x = _logits(13, 257, torch.bfloat16, seed=4)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 5):
            torch.set_num_threads(n)
            got = x.clone()
            results.append((got, *row_exp.exp_rows_(got)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_other_dtypes_and_autograd_tensors_go_through_torch() -> None:
    x = _logits(3, 40, torch.float16, seed=5)
    _, e, s = _oracle(x)
    row_max, sums = row_exp.exp_rows_(x)
    torch.testing.assert_close(x.double(), e, rtol=2e-3, atol=1e-7)
    torch.testing.assert_close(sums.double(), s, rtol=1e-3, atol=0)
    assert not row_exp._usable(torch.zeros(2, 3, requires_grad=True))
    assert not row_exp._usable(torch.zeros(3, 2).t())


def test_a_missing_compiler_falls_back_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv(row_exp.CACHE_ENV, str(tmp_path))
    row_exp._library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=row_exp.__name__):
            assert row_exp._library() is None
        assert "/nonexistent/cc" in caplog.text
        x = _logits(2, 30, torch.float32)
        _, e, s = _oracle(x)
        _, sums = row_exp.exp_rows_(x)
        torch.testing.assert_close(sums.double(), s, rtol=1e-6, atol=0)
    finally:
        row_exp._library.cache_clear()


def test_the_library_is_built_once_per_cache(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: object) -> None:
    monkeypatch.setenv(row_exp.CACHE_ENV, str(tmp_path))
    first = row_exp._build("cc")
    stamp = first.stat().st_mtime_ns
    assert row_exp._build("cc") == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no leftovers
