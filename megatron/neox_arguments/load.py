"""Step 1 of the pipeline: read YAML/JSON config files into raw values, each with its origin.

PyYAML needs three fixes to read GPT-NeoX configs faithfully: it reads `1e-5` as a string
(YAML 1.1 wants a dot), it keeps the last of two equal keys silently, and it forgets line
numbers. `ConfigLoader` fixes all three.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Origin, Problem

# Exponent numbers without a dot, which YAML 1.1 leaves as strings: 1e-5, 5e8, -3E+2.
_EXP_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class ConfigLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads exponent numbers such as `1e-5` and `5e8` as numbers."""

    # A per-class copy: add_implicit_resolver would otherwise append to SafeLoader's lists.
    yaml_implicit_resolvers = {
        k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _construct_exp_number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | float:
    """Integral values without a dot (`5e8`) become ints so that int keys accept them."""
    text = loader.construct_scalar(node).replace("_", "")
    number = float(text)
    if "." not in text and number.is_integer() and "-" not in text.lower().split("e")[1]:
        return int(number)
    return number


_EXP_TAG = "tag:neox:exp-number"
ConfigLoader.add_implicit_resolver(_EXP_TAG, _EXP_NUMBER, list("-+0123456789"))
ConfigLoader.add_constructor(_EXP_TAG, _construct_exp_number)


def normalize_key(key: str) -> str:
    """GPT-NeoX treats `-` and `_` alike in top-level keys; we store the `_` spelling."""
    return key.replace("-", "_")


@dataclass
class RawConfig:
    """Merged raw values of several files: value, origin per key, and each file's text."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _duplicate_problems(node: yaml.Node, name: str, top: bool) -> list[Problem]:
    """Find equal keys inside every mapping of the document (PyYAML would keep the last)."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = normalize_key(key_node.value) if top else key_node.value
                line = key_node.start_mark.line + 1
                if key in seen:
                    problems.append(Problem(
                        key, f"given twice in this file (first on line {seen[key]})",
                        origin=Origin(name, line), hint="keep only one"))
                seen.setdefault(key, line)
            problems += _duplicate_problems(value_node, name, top=False)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            problems += _duplicate_problems(item, name, top=False)
    return problems


def _parse_yaml(text: str, name: str) -> tuple[Any, dict[str, int], list[Problem]]:
    """Parse YAML text into (data, top-level key -> line, duplicate-key problems)."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}, []
        problems = _duplicate_problems(node, name, top=True)
        lines = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                lines.setdefault(normalize_key(str(key_node.value)), key_node.start_mark.line + 1)
        return loader.construct_document(node), lines, problems
    finally:
        loader.dispose()


def _parse_json(text: str, name: str) -> tuple[Any, dict[str, int], list[Problem]]:
    """Parse strict JSON, refusing duplicate keys at any depth."""
    problems: list[Problem] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                problems.append(Problem(key, "given twice in this file", origin=Origin(name)))
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=pairs_hook), {}, problems


def parse_text(text: str, name: str) -> tuple[Any, dict[str, int], list[Problem]]:
    """Parse one config file's text; `.json` files are read as strict JSON, the rest as YAML."""
    try:
        if name.endswith(".json"):
            return _parse_json(text, name)
        return _parse_yaml(text, name)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        return {}, {}, [Problem("<file>", f"cannot be parsed: {err}", origin=Origin(name))]


def merge_into(raw: RawConfig, data: Any, lines: Mapping[str, int], name: str) -> None:
    """Add one file's top-level keys; a key that an earlier file already set is an error."""
    if not isinstance(data, dict):
        raw.problems.append(Problem("<file>", f"must hold a mapping of keys, got "
                                    f"{type(data).__name__}", origin=Origin(name)))
        return
    for key, value in data.items():
        norm = normalize_key(str(key))
        origin = Origin(name, lines.get(norm))
        if norm in raw.origins and raw.origins[norm].file != name:
            raw.problems.append(Problem(
                norm, f"set in two files: {raw.origins[norm]} and {origin}", value, origin,
                "a key may appear in only one of the stacked config files"))
            continue
        raw.values[norm] = value
        raw.origins.setdefault(norm, origin)


def load_files(paths: Iterable[str | Path]) -> RawConfig:
    """Read and merge config files in order, collecting problems instead of stopping."""
    raw = RawConfig()
    for path in paths:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raw.problems.append(Problem("<file>", f"cannot be read: {err.strerror}",
                                        origin=Origin(name), hint="check the config path"))
            continue
        # Keyed by file name as GPT-NeoX does; the full path only when two names collide.
        raw.texts[name if Path(path).name in raw.texts else Path(path).name] = text
        data, lines, problems = parse_text(text, name)
        raw.problems += problems
        merge_into(raw, data, lines, name)
    return raw


def overwrite(raw: RawConfig, values: Mapping[str, Any] | None) -> None:
    """Apply programmatic overrides on top of the files (an override is not a clash)."""
    for key, value in (values or {}).items():
        norm = normalize_key(key)
        raw.values[norm] = value
        raw.origins[norm] = Origin("<overwrite_values>")

