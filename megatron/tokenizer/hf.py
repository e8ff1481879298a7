"""Tokenizers built on ``tokenizers``/``transformers``: GPT-2 BPE, HF JSON, HF GPT-2."""

from __future__ import annotations

import json
import os
from typing import Any

from megatron.tokenizer.base import Tokenizer, register, require_file, special_id
from megatron.tokenizer.errors import TokenizerError

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


class _FastTokenizer(Tokenizer):
    """Shared behaviour of tokenizers wrapping a ``tokenizers.Tokenizer``."""

    def __init__(self, backend: Any, name: str) -> None:
        self.name = name
        self._tok = backend
        self._eod = special_id(backend.token_to_id, EOD_TOKEN)
        self._pad = special_id(backend.token_to_id, PAD_TOKEN)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    @property
    def eod(self) -> int:
        if self._eod is None:
            raise TokenizerError(f"{self.name}: the vocabulary has no {EOD_TOKEN!r} token")
        return self._eod

    @property
    def pad(self) -> int | None:
        return self._pad

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(texts)]

    def detokenize(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids))


@register("HFTokenizer")
class HFTokenizer(_FastTokenizer):
    """A ``tokenizers`` JSON file. eod is ``<|endoftext|>``, pad ``<|padding|>`` (if present)."""

    def __init__(self, vocab_file: str | None = None, **_: Any) -> None:
        from tokenizers import Tokenizer as Backend

        path = require_file(vocab_file, "a tokenizers JSON file (vocab_file)", "HFTokenizer")
        try:
            backend = Backend.from_file(path)
        except Exception as exc:  # the Rust library raises plain Exceptions
            raise TokenizerError(f"HFTokenizer: cannot read {path!r}: {exc}") from exc
        super().__init__(backend, "HFTokenizer")


@register("GPT2BPETokenizer")
class GPT2BPETokenizer(_FastTokenizer):
    """GPT-2's byte-level BPE from ``vocab.json`` + ``merges.txt``; eod ``<|endoftext|>``, no pad.

    Special strings in the text are encoded as ordinary text, as GPT-NeoX's GPT2Tokenizer does.
    """

    def __init__(self, vocab_file: str | None = None, merge_file: str | None = None,
                 **_: Any) -> None:
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers

        vocab = require_file(vocab_file, "a vocab.json (vocab_file)", "GPT2BPETokenizer")
        merges = require_file(merge_file, "a merges.txt (merge_file)", "GPT2BPETokenizer")
        try:
            backend = Backend(models.BPE.from_file(vocab, merges))
        except Exception as exc:
            raise TokenizerError(f"GPT2BPETokenizer: cannot read {vocab!r}/{merges!r}: {exc}") \
                from exc
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        super().__init__(backend, "GPT2BPETokenizer")
        self._pad = None


@register("HFGPT2Tokenizer")
class HFGPT2Tokenizer(Tokenizer):
    """transformers' GPT2TokenizerFast with ``<|padding|>`` added, as GPT-NeoX sets it up.

    ``vocab_file`` may be a local model directory, a ``tokenizer.json``, or a ``vocab.json``
    (with ``merge_file``); without it the ``gpt2`` files must already be in the local HF cache.
    Nothing is downloaded.
    """

    name = "HFGPT2Tokenizer"

    def __init__(self, vocab_file: str | None = None, merge_file: str | None = None,
                 **_: Any) -> None:
        self._tok = _load_gpt2_fast(vocab_file, merge_file)
        self._tok.add_special_tokens({"pad_token": PAD_TOKEN})

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def eod(self) -> int:
        return int(self._tok.eos_token_id)

    @property
    def pad(self) -> int | None:
        return int(self._tok.pad_token_id)

    def tokenize(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self._tok(texts)["input_ids"]]

    def detokenize(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids))


def _read_vocab_and_merges(vocab_path: str, merges_path: str) -> tuple[dict, list]:
    """GPT-2's vocab.json and merges.txt as the dict and pair list transformers 5 accepts."""
    with open(vocab_path, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    pairs = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return vocab, pairs


def _load_gpt2_fast(vocab_file: str | None, merge_file: str | None) -> Any:
    """Build a GPT2TokenizerFast from local files only."""
    from transformers import GPT2TokenizerFast

    try:
        if vocab_file is None:
            return GPT2TokenizerFast.from_pretrained("gpt2", local_files_only=True)
        if os.path.isdir(vocab_file):
            return GPT2TokenizerFast.from_pretrained(vocab_file, local_files_only=True)
        path = require_file(vocab_file, "a tokenizer file (vocab_file)", "HFGPT2Tokenizer")
        if merge_file is not None:
            merges = require_file(merge_file, "a merges.txt (merge_file)", "HFGPT2Tokenizer")
            vocab, pairs = _read_vocab_and_merges(path, merges)
            return GPT2TokenizerFast(vocab=vocab, merges=pairs)
        return GPT2TokenizerFast(tokenizer_file=path)
    except TokenizerError:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError with its own wording
        raise TokenizerError(
            f"HFGPT2Tokenizer: cannot load {vocab_file or 'gpt2'!r} from local files ({exc}); "
            "pass vocab_file pointing at a local tokenizer directory or tokenizer.json"
        ) from exc
