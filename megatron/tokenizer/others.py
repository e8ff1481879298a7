"""Tokenizers without HuggingFace: SentencePiece, character level, and tiktoken."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron.tokenizer.base import Tokenizer, register, require_file
from megatron.tokenizer.errors import TokenizerError

EOD_TOKEN = "<|endoftext|>"


@register("SPMTokenizer")
class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model file; eod is the id of the piece ``<|endoftext|>`` (GPT-NeoX).

    Like GPT-NeoX, a model without that piece maps eod to the unknown id.
    """

    name = "SPMTokenizer"

    def __init__(self, vocab_file: str | None = None, **_: Any) -> None:
        import sentencepiece as spm

        path = require_file(vocab_file, "a SentencePiece model (vocab_file)", self.name)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=path)
        except Exception as exc:
            raise TokenizerError(f"{self.name}: cannot load {path!r}: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def eod(self) -> int:
        return int(self._sp.piece_to_id(EOD_TOKEN))

    @property
    def pad(self) -> int | None:
        pad = int(self._sp.pad_id())
        return pad if pad >= 0 else None

    def tokenize(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self._sp.encode(list(texts))]

    def detokenize(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


@register("CharLevelTokenizer")
class CharLevelTokenizer(Tokenizer):
    """UTF-8 bytes as ids in a 512-id vocabulary; eod 0, pad 1 (GPT-NeoX's values)."""

    name = "CharLevelTokenizer"

    def __init__(self, vocab_size: int = 512, **_: Any) -> None:
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return 0

    @property
    def pad(self) -> int | None:
        return 1

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def detokenize(self, ids: list[int]) -> str:
        # GPT-NeoX clamps each id into [32, vocab_size] and maps it with chr().
        return "".join(chr(max(32, min(int(i), self._vocab_size))) for i in ids)


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """Make tiktoken fail instead of fetching a file that is not in its local cache."""
    import tiktoken.load as tl

    original = tl.read_file

    def local_only(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise TokenizerError(
                f"TiktokenTokenizer: {blobpath} is not in tiktoken's local cache "
                "(TIKTOKEN_CACHE_DIR) and downloads are disabled; pass a .tiktoken file path"
            )
        return original(blobpath)

    tl.read_file = local_only
    try:
        yield
    finally:
        tl.read_file = original


def _gpt2_pattern() -> str:
    """GPT-2's pre-tokenization regex, as tiktoken ships it."""
    from tiktoken_ext.openai_public import r50k_pat_str

    return r50k_pat_str


@register("TiktokenTokenizer")
class TiktokenTokenizer(Tokenizer):
    """tiktoken BPE: a local ``.tiktoken`` ranks file, or an encoding name already cached.

    For a file, the pre-tokenizer regex is GPT-2's unless ``tiktoken_pattern`` is given, and
    ``<|endoftext|>`` is added after the ranks. eod is the encoding's end-of-text id; no pad.
    Special-token strings in text are encoded as their special ids.
    """

    name = "TiktokenTokenizer"

    def __init__(self, vocab_file: str | None = None, tiktoken_pattern: str | None = None,
                 **_: Any) -> None:
        import tiktoken

        if vocab_file is None:
            raise TokenizerError("TiktokenTokenizer needs vocab_file: a .tiktoken path or name")
        looks_like_path = os.sep in vocab_file or vocab_file.endswith(".tiktoken")
        if looks_like_path or os.path.exists(vocab_file):
            path = require_file(vocab_file, "a .tiktoken ranks file (vocab_file)", self.name)
            from tiktoken.load import load_tiktoken_bpe

            ranks = load_tiktoken_bpe(path)
            self._enc = tiktoken.Encoding(
                name=Path(path).stem,
                pat_str=tiktoken_pattern or _gpt2_pattern(),
                mergeable_ranks=ranks,
                special_tokens={EOD_TOKEN: len(ranks)},
            )
        else:
            with _no_downloads():
                try:
                    self._enc = tiktoken.get_encoding(vocab_file)
                except ValueError as exc:
                    raise TokenizerError(f"{self.name}: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)

    @property
    def eod(self) -> int:
        return int(self._enc.eot_token)

    def tokenize(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all")

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_batch(list(texts), allowed_special="all", num_threads=1)

    def detokenize(self, ids: list[int]) -> str:
        return self._enc.decode([int(i) for i in ids])
