"""GPT-2 tokenizer files derived from the shared tokenizers JSON, and the enwik8 sample."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
GPT2_JSON = SHARED / "gpt2-tokenizer.json"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as published with GPT-2)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@pytest.fixture(scope="session")
def gpt2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """vocab.json, merges.txt and a .tiktoken ranks file, all derived from the JSON."""
    out = tmp_path_factory.mktemp("gpt2")
    model = json.loads(GPT2_JSON.read_text())["model"]
    vocab: dict[str, int] = model["vocab"]
    (out / "vocab.json").write_text(json.dumps(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    decode = {c: b for b, c in _bytes_to_unicode().items()}
    lines = []
    for token, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
        if token == "<|endoftext|>":
            continue
        raw = bytes(decode[c] for c in token)
        lines.append(f"{base64.b64encode(raw).decode()} {rank}")
    (out / "gpt2.tiktoken").write_text("\n".join(lines) + "\n")
    return {"vocab": str(out / "vocab.json"), "merges": str(out / "merges.txt"),
            "tiktoken": str(out / "gpt2.tiktoken"), "json": str(GPT2_JSON)}


@pytest.fixture(scope="session")
def enwik8_docs() -> list[str]:
    """The 10 documents GPT-NeoX tokenized for the reference .bin."""
    path = SHARED / "neox-reference" / "enwik8_first100.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
