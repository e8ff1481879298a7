"""fp32 products on OpenBLAS where it beats torch's MKL (megatron/utils/blas.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from megatron.utils import blas


def use(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    """Force the backend (``openblas`` or ``torch``) for one test."""
    monkeypatch.setenv(blas.ENV_OVERRIDE, choice)
    blas.enabled.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_choice() -> Iterator[None]:
    blas.enabled.cache_clear()
    yield
    blas.enabled.cache_clear()


def _matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def _layouts(rows: int, cols: int, seed: int) -> dict[str, torch.Tensor]:
    """One matrix's values in every layout BLAS may be handed."""
    m = _matrix(rows, cols, seed)
    wide = _matrix(rows + 3, cols + 5, seed + 1)
    wide[2:2 + rows, 1:1 + cols] = m
    tall = _matrix(cols + 4, rows + 2, seed + 2)
    tall[1:1 + cols, 2:2 + rows] = m.t()
    return {
        "contiguous": m,
        "transposed view": m.t().contiguous().t(),
        "row slice of a wider matrix": wide[2:2 + rows, 1:1 + cols],
        "transposed slice": tall[1:1 + cols, 2:2 + rows].t(),
        "every other column": torch.stack([m, m], dim=-1).reshape(rows, 2 * cols)[:, ::2],
    }


@pytest.mark.parametrize("layout_a", list(_layouts(2, 2, 0)))
@pytest.mark.parametrize("layout_b", ["contiguous", "transposed view", "transposed slice"])
def test_mm_matches_a_float64_product_in_every_layout(
        monkeypatch: pytest.MonkeyPatch, layout_a: str, layout_b: str) -> None:
    use(monkeypatch, "openblas")
    assert blas.enabled(), "scipy-openblas32 is a dependency: the library must load"
    a = _layouts(37, 29, 0)[layout_a]
    b = _layouts(29, 23, 10)[layout_b]
    want = a.double() @ b.double()
    got = blas.mm(a, b)
    assert got.dtype == torch.float32 and got.shape == (37, 23)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_mm_writes_into_out_ignoring_its_old_values(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, "openblas")
    a, b = _matrix(16, 8, 0), _matrix(8, 12, 1)
    out = torch.full((16, 12), float("nan"))
    assert blas.mm(a, b, out=out) is out
    torch.testing.assert_close(out.double(), a.double() @ b.double(), rtol=1e-5, atol=1e-5)


def test_mm_accumulates_into_a_row_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, "openblas")
    a, b = _matrix(16, 8, 0), _matrix(8, 12, 1)
    big = _matrix(20, 12, 2)
    before = big.clone()
    blas.mm(a.t().contiguous().t(), b, out=big[3:19], accumulate=True)
    want = before.double()
    want[3:19] += a.double() @ b.double()
    torch.testing.assert_close(big.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(big[:3], before[:3]) and torch.equal(big[19:], before[19:])


@pytest.mark.parametrize("choice", ["openblas", "torch"])
def test_other_dtypes_and_awkward_outputs_go_to_torch(monkeypatch: pytest.MonkeyPatch,
                                                      choice: str) -> None:
    use(monkeypatch, choice)
    a, b = _matrix(6, 4, 0), _matrix(4, 5, 1)
    bf = blas.mm(a.bfloat16(), b.bfloat16())
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf, (a.bfloat16() @ b.bfloat16()), rtol=0, atol=0)
    strided_out = torch.zeros(5, 6).t()  # columns of unit stride: BLAS would need a copy
    blas.mm(a, b, out=strided_out)
    torch.testing.assert_close(strided_out, a @ b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(blas.mm(a, b, out=strided_out, accumulate=True), 2 * (a @ b),
                               rtol=1e-6, atol=1e-6)


def test_openblas_follows_torchs_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, "openblas")
    before = torch.get_num_threads()
    a, b = _matrix(8, 8, 0), _matrix(8, 8, 1)
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            blas.mm(a, b)
            assert blas._library().scipy_openblas_get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_chosen_by_cpu_vendor_and_overridable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(blas.ENV_OVERRIDE, raising=False)
    for vendor, expected in (("AuthenticAMD", True), ("HygonGenuine", True),
                             ("GenuineIntel", False), ("arm", False)):
        monkeypatch.setattr(blas, "_cpu_vendor", lambda v=vendor: v)
        blas.enabled.cache_clear()
        assert blas.enabled() is expected, vendor
    monkeypatch.setattr(blas, "_cpu_vendor", lambda: "AuthenticAMD")
    use(monkeypatch, "torch")
    assert not blas.enabled()
    monkeypatch.setattr(blas, "_cpu_vendor", lambda: "GenuineIntel")
    use(monkeypatch, "openblas")
    assert blas.enabled()


def test_missing_library_means_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "_library", lambda: None)
    use(monkeypatch, "openblas")
    assert not blas.enabled()
    a, b = _matrix(3, 4, 0), _matrix(4, 2, 1)
    torch.testing.assert_close(blas.mm(a, b), a @ b, rtol=0, atol=0)


@pytest.mark.parametrize("user_value", [None, "12"])
def test_idle_threads_sleep_at_once_unless_the_user_says(user_value: str | None) -> None:
    """The spin setting must be in the environment before the library loads (importing
    ``scipy_openblas32`` loads it), and a user's own value is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env[blas.ENV_OVERRIDE] = "openblas"
    if user_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = user_value
    code = ("import os, sys\n"
            "from megatron.utils import blas\n"
            "assert 'scipy_openblas32' not in sys.modules\n"
            "assert blas.enabled()\n"
            "print(os.environ['OPENBLAS_THREAD_TIMEOUT'])\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == (user_value or blas.THREAD_TIMEOUT)
