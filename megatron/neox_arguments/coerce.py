"""Step 3 of the pipeline: check each value against its field annotation and normalise it.

An int is accepted where a float is declared (and an integral float where an int is), and
`Literal` values match case-insensitively and are stored in their canonical spelling.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

# Other spellings GPT-NeoX accepts for some Literal values, per key.
ALIASES: dict[str, dict[str, str]] = {
    "precision": {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32"},
}


class CoercionError(ValueError):
    """A value does not fit its annotation; the message says what was expected."""


def describe(tp: Any) -> str:
    """Human-readable name of an annotation, used in error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join(describe(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))


def _literal(value: Any, tp: Any, key: str) -> Any:
    if not isinstance(value, str) and not isinstance(value, int | float):
        raise CoercionError(f"expected {describe(tp)}")
    allowed = typing.get_args(tp)
    text = str(value).lower()
    text = ALIASES.get(key, {}).get(text, text)
    for choice in allowed:
        if str(choice).lower() == text:
            return choice
    raise CoercionError(f"expected {describe(tp)}")


def _scalar(value: Any, tp: type) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise CoercionError(f"expected {describe(tp)}, got {type(value).__name__}")


def _container(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise CoercionError(f"expected {describe(tp)}, got {type(value).__name__}")
        return [coerce_value(v, args[0], key) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise CoercionError(f"expected {describe(tp)}, got {type(value).__name__}")
        return {k: coerce_value(v, args[1], key) for k, v in value.items()} if args else dict(value)
    raise CoercionError(f"unsupported annotation {describe(tp)}")


def coerce_value(value: Any, tp: Any, key: str = "") -> Any:
    """Return `value` normalised to annotation `tp`, or raise CoercionError."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return coerce_value(value, member, key)
            except CoercionError:
                continue
        raise CoercionError(f"expected {describe(tp)}, got {type(value).__name__}")
    if origin is Literal:
        return _literal(value, tp, key)
    if origin is not None:
        return _container(value, tp, key)
    if value is None:
        raise CoercionError(f"expected {describe(tp)}, got None")
    return _scalar(value, tp)
