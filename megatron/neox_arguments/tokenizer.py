"""Tokenizer group: which tokenizer to build and how the vocabulary is padded."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class TokenizerArgs:
    """Tokenizer choice; the files it reads are `vocab_file` and `merge_file` (training group)."""

    tokenizer_type: Literal[
        "GPT2BPETokenizer",
        "HFTokenizer",
        "HFGPT2Tokenizer",
        "SPMTokenizer",
        "CharLevelTokenizer",
        "TiktokenTokenizer",
    ] = "GPT2BPETokenizer"
    """Which tokenizer implementation reads vocab_file (and merge_file for GPT-2 BPE)."""

    padded_vocab_size: int | None = None
    """Embedding rows after padding; None lets the worker compute it from the tokenizer."""
