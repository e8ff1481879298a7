"""Tokenizers against GPT-NeoX's reference tokens and against each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron.tokenizer import TokenizerError, build_tokenizer, padded_vocab_size, tokenizer_types

SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
REF_PREFIX = SHARED / "neox-reference" / "enwik8_first100_text_document"


def _reference_items() -> list[list[int]]:
    """Token ids GPT-NeoX wrote (uint16 after a 34-byte header + index), without the eod."""
    idx = (REF_PREFIX.with_suffix(".idx")).read_bytes()
    sizes = np.frombuffer(idx, dtype="<i4", count=10, offset=34)
    tokens = np.fromfile(REF_PREFIX.with_suffix(".bin"), dtype="<u2")
    ends = np.cumsum(sizes)
    return [tokens[e - s:e - 1].tolist() for s, e in zip(sizes, ends, strict=True)]


def test_hf_tokenizer_matches_gpt_neox_tokens(gpt2_files: dict, enwik8_docs: list[str]) -> None:
    tok = build_tokenizer("HFTokenizer", vocab_file=gpt2_files["json"])
    assert (tok.vocab_size, tok.eod, tok.pad) == (50257, 50256, None)
    assert [tok.tokenize(d) for d in enwik8_docs] == _reference_items()
    assert tok.tokenize_batch(enwik8_docs[:3]) == _reference_items()[:3]


def test_gpt2_bpe_matches_hf(gpt2_files: dict, enwik8_docs: list[str]) -> None:
    tok = build_tokenizer("gpt2bpetokenizer", gpt2_files["vocab"], gpt2_files["merges"])
    assert (tok.vocab_size, tok.eod, tok.pad) == (50257, 50256, None)
    assert [tok.tokenize(d) for d in enwik8_docs] == _reference_items()
    assert tok.detokenize(tok.tokenize(enwik8_docs[4])) == enwik8_docs[4]
    # No special handling of the eod string in the text, as GPT-NeoX's GPT-2 BPE.
    assert tok.tokenize("<|endoftext|>") != [50256]


def test_tiktoken_file_matches_hf(gpt2_files: dict, enwik8_docs: list[str]) -> None:
    tok = build_tokenizer("TiktokenTokenizer", vocab_file=gpt2_files["tiktoken"])
    assert (tok.vocab_size, tok.eod, tok.pad) == (50257, 50256, None)
    assert [tok.tokenize(d) for d in enwik8_docs] == _reference_items()
    assert tok.tokenize_batch(enwik8_docs[:2]) == _reference_items()[:2]
    assert tok.detokenize(tok.tokenize(enwik8_docs[1])) == enwik8_docs[1]


def test_tiktoken_name_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(TokenizerError, match="not in tiktoken's local cache"):
        build_tokenizer("TiktokenTokenizer", vocab_file="r50k_base")


def test_tiktoken_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="missing.tiktoken"):
        build_tokenizer("TiktokenTokenizer", vocab_file=str(tmp_path / "missing.tiktoken"))


def test_hf_gpt2_adds_padding(gpt2_files: dict, enwik8_docs: list[str]) -> None:
    tok = build_tokenizer("HFGPT2Tokenizer", gpt2_files["vocab"], gpt2_files["merges"])
    assert (tok.vocab_size, tok.eod, tok.pad) == (50258, 50256, 50257)
    assert tok.tokenize(enwik8_docs[0]) == _reference_items()[0]


def test_char_level() -> None:
    tok = build_tokenizer("CharLevelTokenizer")
    assert (tok.vocab_size, tok.eod, tok.pad) == (512, 0, 1)
    assert tok.tokenize("Hé") == [72, 195, 169]  # UTF-8 bytes
    assert tok.detokenize([72, 105, 5]) == "Hi "  # ids below 32 clamp to a space


def test_sentencepiece(tmp_path: Path, enwik8_docs: list[str]) -> None:
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(enwik8_docs))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=150,
        user_defined_symbols=["<|endoftext|>"], pad_id=3, unk_id=0, bos_id=1, eos_id=2,
        minloglevel=2,
    )
    tok = build_tokenizer("SPMTokenizer", vocab_file=str(tmp_path / "m.model"))
    assert tok.vocab_size == 150
    assert (tok.eod, tok.pad) == (4, 3)  # first user symbol follows the 4 fixed ids
    text = "The Wikipedia page"
    assert tok.detokenize(tok.tokenize(text)) == text
    assert tok.tokenize_batch([text, text]) == [tok.tokenize(text)] * 2


def test_unknown_type_lists_choices() -> None:
    with pytest.raises(TokenizerError, match="'BertTokenizer' is unknown.*HFTokenizer"):
        build_tokenizer("BertTokenizer")
    assert {"GPT2BPETokenizer", "HFTokenizer", "HFGPT2Tokenizer", "SPMTokenizer",
            "CharLevelTokenizer", "TiktokenTokenizer"} == set(tokenizer_types())


def test_missing_vocab_file_named(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"HFTokenizer.*nothere\.json.*does not exist"):
        build_tokenizer("HFTokenizer", vocab_file=str(tmp_path / "nothere.json"))
    with pytest.raises(TokenizerError, match="merge_file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=str(SHARED / "gpt2-tokenizer.json"))


@pytest.mark.parametrize(("vocab", "div", "tp", "expected"), [
    (50257, 128, 1, 50304), (50257, 128, 2, 50432), (50304, 128, 1, 50304),
    (512, 128, 4, 512), (100, 1, 1, 100), (129, 64, 3, 192),
])
def test_padded_vocab_size(vocab: int, div: int, tp: int, expected: int) -> None:
    assert padded_vocab_size(vocab, div, tp) == expected
