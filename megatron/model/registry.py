"""A tiny name -> implementation registry used for every model option kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from megatron.model.errors import ModelSpecError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps option names (the values users write in YAML) to implementations.

    Adding an option is one ``@REG.register("name")`` on a class or function; selection
    happens with ``REG.get(name)`` at a single build site, never with if-chains.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator that records ``obj`` under ``key`` (a duplicate key is a bug)."""

        def add(obj: T) -> T:
            if key in self._entries:
                raise ModelSpecError(f"{self.name}: '{key}' is registered twice")
            self._entries[key] = obj
            return obj

        return add

    def get(self, key: str) -> T:
        """The entry for ``key``; raises with the valid keys when it is unknown."""
        try:
            return self._entries[key]
        except KeyError:
            raise ModelSpecError(
                f"unknown {self.name} '{key}'; expected one of {sorted(self._entries)}"
            ) from None

    def keys(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
