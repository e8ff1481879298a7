"""Steps 2-5 glued together: resolve keys, coerce, derive, validate, into one value dict."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any

from .coerce import CoercionError, coerce_value
from .derive import derive
from .errors import ConfigError, Origin, Problem
from .load import RawConfig, normalize_key
from .resources import Resources
from .validate import validate


def field_types(cls: type) -> dict[str, Any]:
    """Annotation of every dataclass field of `cls`, by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_defaults(cls: type) -> dict[str, Any]:
    """Default value of every dataclass field of `cls` (all our fields have one)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def suggest(key: str, known: typing.Iterable[str]) -> str:
    """Hint naming the closest known key, or an empty string."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else "see configs/neox_arguments.md"


def resolve_and_coerce(raw: RawConfig, types: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                            list[Problem]]:
    """Drop unknown keys (reporting each with a suggestion) and coerce the rest."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in raw.values.items():
        origin = raw.origins.get(key)
        if key not in types:
            problems.append(Problem(key, "unknown key", value, origin, suggest(key, types)))
            continue
        try:
            values[key] = coerce_value(value, types[key], key)
        except CoercionError as err:
            problems.append(Problem(key, str(err), value, origin))
    return values, problems


def build_values(cls: type, raw: RawConfig, resources: Resources | None,
                 rederive: bool = True) -> dict[str, Any]:
    """Complete, validated value dict for `cls` from raw values; raises ConfigError.

    `resources=None` with rederive detects them from the runner keys (deepy.py's case).
    """
    types = field_types(cls)
    values, problems = resolve_and_coerce(raw, types)
    problems = raw.problems + problems
    if problems:
        raise ConfigError(problems)
    if rederive:
        values = derive(values, resources if resources is not None else Resources.detect(values))
    full = {**field_defaults(cls), **values}
    # Derived values must still fit their annotations (e.g. an inexact batch division).
    for key, value in values.items():
        try:
            full[key] = coerce_value(value, types[key], key)
        except CoercionError as err:
            problems.append(Problem(key, f"derived value {err}", value, raw.origins.get(key)))
    problems += validate(full, raw.origins)
    if problems:
        raise ConfigError(problems)
    return full


def raw_from_mapping(values: Mapping[str, Any], source: str) -> RawConfig:
    """RawConfig for values that come from code rather than a file."""
    raw = RawConfig()
    for key, value in values.items():
        norm = normalize_key(str(key))
        raw.values[norm] = value
        raw.origins[norm] = Origin(source)
    return raw
