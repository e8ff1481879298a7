"""Imports point down only: each megatron package may import its own layer or lower ones.

    L4  entry points, tools/, eval_tasks/
    L3  megatron.training, megatron.inference
    L2  megatron.model
    L1  megatron.parallel, megatron.data, megatron.tokenizer (independent of each other)
    L0  megatron.neox_arguments, megatron.utils, megatron.launch
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {
    "neox_arguments": 0,
    "utils": 0,
    "launch": 0,
    "parallel": 1,
    "data": 1,
    "tokenizer": 1,
    "model": 2,
    "training": 3,
    "inference": 3,
}
# Packages that must not see each other even though they share a layer.
INDEPENDENT = {"parallel", "data", "tokenizer", "neox_arguments", "launch"}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "megatron" and len(parts) > 1 and parts[1] in LAYER:
                found.add(parts[1])
    return found


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / "megatron" / package).rglob("*.py")):
        for other in _imported_packages(path) - {package}:
            upward = LAYER[other] > LAYER[package]
            sideways = LAYER[other] == LAYER[package] and {package, other} <= INDEPENDENT
            if upward or sideways:
                bad.append(f"{path.relative_to(ROOT)} imports megatron.{other}")
    return bad


@pytest.mark.parametrize("package", sorted(LAYER))
def test_imports_point_down(package: str) -> None:
    assert _violations(package) == []


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from megatron.training import loop\nimport megatron.model.gpt\n")
    assert _imported_packages(bad) == {"training", "model"}
