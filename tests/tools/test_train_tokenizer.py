"""train_tokenizer.py: a byte-level BPE with GPT-NeoX's specials that HFTokenizer loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from megatron.tokenizer import build_tokenizer  # noqa: E402
from tools import train_tokenizer  # noqa: E402

SHARED = (ROOT / ".." / "shared" / "data").resolve()


def test_trains_loadable_tokenizer(tmp_path: Path) -> None:
    out = tmp_path / "tok" / "t.json"
    code = train_tokenizer.main([
        "--input", f"{SHARED / 'neox-reference' / 'enwik8_first100.jsonl'},"
        f"{SHARED / 'enwik8_first100.txt'}",
        "--output", str(out), "--vocab-size", "400", "--jsonl-keys", "text"])
    assert code == 0
    tok = build_tokenizer("HFTokenizer", vocab_file=str(out))
    assert (tok.eod, tok.pad) == (0, 1)
    assert tok.vocab_size == 400
    text = "<mediawiki> Über naïve text\n  with spaces"
    assert tok.detokenize(tok.tokenize(text)) == text  # byte level: nothing is unknown
    assert tok.tokenize("<|endoftext|>") == [0]
    assert [p.name for p in out.parent.iterdir()] == ["t.json"]
    assert json.loads(out.read_text())["model"]["type"] == "BPE"


def test_missing_input(tmp_path: Path) -> None:
    code = train_tokenizer.main(["--input", str(tmp_path / "none.txt"),
                                 "--output", str(tmp_path / "t.json"), "--vocab-size", "300"])
    assert code == 1
