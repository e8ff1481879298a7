"""evaluate.py shares its name with Hugging Face's ``evaluate``; loading it must not shadow it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_loading_the_script_puts_hf_evaluate_in_sys_modules(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As when run as a script: the repository folder first on sys.path, nothing imported yet.
    monkeypatch.setattr(sys, "path", [str(REPO), *sys.path])
    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    spec = importlib.util.spec_from_file_location("neox_evaluate_entry", REPO / "evaluate.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    hf = sys.modules["evaluate"]
    assert Path(hf.__file__).parent.parent.name == "site-packages"
    assert callable(hf.load)  # the Hugging Face API that lm-eval tasks call
    assert str(REPO) in sys.path  # the search path is restored afterwards
    assert callable(script.main)


def test_importing_it_as_evaluate_yields_the_hf_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # `import evaluate` from the repository root finds this file first; it hands over.
    monkeypatch.setattr(sys, "path", [str(REPO), *sys.path])
    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    import evaluate

    assert Path(evaluate.__file__).parent.parent.name == "site-packages"
