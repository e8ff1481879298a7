"""Config error types: one `Problem` per mistake, all of them raised together as `ConfigError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Origin:
    """Where a value came from, so that messages can point the user at the right line."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


_UNSET = object()


@dataclass(frozen=True)
class Problem:
    """One config mistake: which key, which value, where it came from, what was expected."""

    key: str
    message: str
    value: Any = _UNSET
    origin: Origin | None = None
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin is not None else ""
        shown = "" if self.value is _UNSET else f"={self.value!r}"
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.key}{shown}: {self.message}{hint}"


class ConfigError(ValueError):
    """Raised when a config cannot be used; carries every problem found, not just the first.

    Accepts a list of `Problem`s or a plain message (callers such as deepy.py join their own
    lines into one error).
    """

    def __init__(self, problems: list[Problem] | str) -> None:
        if isinstance(problems, str):
            self.problems: list[Problem] = []
            text = problems
        else:
            self.problems = list(problems)
            text = "\n".join(str(p) for p in self.problems)
        super().__init__(text)
