"""Tokenizers by GPT-NeoX ``tokenizer_type`` (case-insensitive) and vocabulary padding.

``build_tokenizer("HFTokenizer", vocab_file="tok.json")`` returns a :class:`Tokenizer` with
``vocab_size``, ``eod``, ``pad``, ``tokenize``, ``detokenize`` and ``tokenize_batch``.
"""

from __future__ import annotations

import logging
from typing import Any

from megatron.tokenizer import hf, others  # noqa: F401  (registers the tokenizer classes)
from megatron.tokenizer.base import Tokenizer, get_factory, register, tokenizer_types
from megatron.tokenizer.errors import TokenizerError

logger = logging.getLogger(__name__)

__all__ = [
    "Tokenizer",
    "TokenizerError",
    "build_tokenizer",
    "padded_vocab_size",
    "register",
    "tokenizer_types",
]


def build_tokenizer(
    tokenizer_type: str,
    vocab_file: str | None = None,
    merge_file: str | None = None,
    **kwargs: Any,
) -> Tokenizer:
    """Build the tokenizer registered as ``tokenizer_type`` from local files.

    Raises:
        TokenizerError: unknown type, missing file, or a file the library cannot read.
    """
    factory = get_factory(tokenizer_type)
    tokenizer = factory(vocab_file=vocab_file, merge_file=merge_file, **kwargs)
    logger.info("built %s tokenizer (vocab size %d)", tokenizer.name, tokenizer.vocab_size)
    return tokenizer


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int,
                      model_parallel_size: int) -> int:
    """Round ``vocab_size`` up to a multiple of ``divisible_by * model_parallel_size``.

    GPT-NeoX pads so every tensor-parallel rank holds an equal, GPU-friendly vocabulary slice.
    """
    multiple = make_vocab_size_divisible_by * max(1, model_parallel_size)
    if multiple <= 0:
        raise TokenizerError(
            f"make_vocab_size_divisible_by must be positive, got {make_vocab_size_divisible_by}"
        )
    return -(-vocab_size // multiple) * multiple
