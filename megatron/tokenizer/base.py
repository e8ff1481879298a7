"""The tokenizer interface every registered tokenizer implements, and the registry itself."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from megatron.tokenizer.errors import TokenizerError


class Tokenizer(ABC):
    """Text to token ids and back, plus the special ids training needs.

    ``eod`` separates documents (preprocess appends it with ``--append-eod``; ``eod_mask_loss``
    masks it). ``pad`` is None where the tokenizer has no padding token, as in GPT-NeoX.
    """

    name: str = "tokenizer"

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (before padding for the model)."""

    @property
    @abstractmethod
    def eod(self) -> int:
        """End-of-document id."""

    @property
    def pad(self) -> int | None:
        """Padding id, or None when the tokenizer has none."""
        return None

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``."""

    @abstractmethod
    def detokenize(self, ids: list[int]) -> str:
        """Text of ``ids``."""

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text; subclasses override with a native batch encoder."""
        return [self.tokenize(text) for text in texts]


TokenizerFactory = Callable[..., Tokenizer]
_REGISTRY: dict[str, TokenizerFactory] = {}
_CANONICAL: dict[str, str] = {}


def register(name: str) -> Callable[[TokenizerFactory], TokenizerFactory]:
    """Register a tokenizer class under ``name`` (looked up case-insensitively)."""

    def decorate(factory: TokenizerFactory) -> TokenizerFactory:
        key = name.lower()
        if key in _REGISTRY:
            raise TokenizerError(f"tokenizer type {name!r} is registered twice")
        _REGISTRY[key] = factory
        _CANONICAL[key] = name
        return factory

    return decorate


def tokenizer_types() -> list[str]:
    """The registered tokenizer type names, as spelled in GPT-NeoX configs."""
    return sorted(_CANONICAL.values())


def get_factory(tokenizer_type: str) -> TokenizerFactory:
    """The factory registered for ``tokenizer_type`` (any case)."""
    factory = _REGISTRY.get(str(tokenizer_type).lower())
    if factory is None:
        raise TokenizerError(
            f"tokenizer_type {tokenizer_type!r} is unknown; expected one of {tokenizer_types()}"
        )
    return factory


def require_file(path: str | os.PathLike[str] | None, what: str, tokenizer_type: str) -> str:
    """Return ``path`` if it is an existing file, else raise a TokenizerError naming it."""
    if path is None:
        raise TokenizerError(f"{tokenizer_type} needs {what}; none was given")
    if not os.path.isfile(path):
        raise TokenizerError(f"{tokenizer_type}: {what} {os.fspath(path)!r} does not exist")
    return os.fspath(path)


def special_id(lookup: Callable[[str], Any], token: str) -> int | None:
    """Id of ``token`` via ``lookup`` (None when absent)."""
    value = lookup(token)
    return None if value is None else int(value)
