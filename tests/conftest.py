"""Session-wide settings and shared fixtures for the test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# DeepSpeed JIT-builds a shared-memory comm op for every CPU run; one cache folder for the
# whole suite (and everything it launches) means it is built once, not once per test module.
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "neox-trainer" / "torch_extensions")
)


@pytest.fixture(params=["kernel", "torch"])
def row_exp_backend(request: pytest.FixtureRequest,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each path of ``megatron/utils/row_exp.py``: the compiled kernel, and torch ops."""
    from megatron.utils import row_exp

    if request.param == "torch":
        monkeypatch.setenv(row_exp.DISABLE_ENV, "torch")
    row_exp._library.cache_clear()
    assert (row_exp._library() is None) is (request.param == "torch")
    yield request.param
    row_exp._library.cache_clear()
