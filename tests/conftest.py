"""Session-wide settings for the test suite."""

from __future__ import annotations

import os
from pathlib import Path

# DeepSpeed JIT-builds a shared-memory comm op for every CPU run; one cache folder for the
# whole suite (and everything it launches) means it is built once, not once per test module.
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "neox-trainer" / "torch_extensions")
)
