"""The config's stop_tokens strings become token ids, one token each or a clear error."""

from __future__ import annotations

import pytest

from megatron.inference.errors import InferenceError
from megatron.inference.setup import stop_token_ids
from megatron.tokenizer import build_tokenizer


def test_single_token_strings_map_to_their_ids() -> None:
    tok = build_tokenizer("CharLevelTokenizer")
    assert stop_token_ids(tok, ["\n", "."]) == frozenset({10, 46})
    assert stop_token_ids(tok, None) == frozenset()


def test_multi_token_string_is_refused() -> None:
    tok = build_tokenizer("CharLevelTokenizer")
    with pytest.raises(InferenceError, match="'ab' is 2 tokens"):
        stop_token_ids(tok, ["ab"])
