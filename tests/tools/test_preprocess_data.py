"""preprocess_data.py: byte-identical to GPT-NeoX, input formats, bad lines, atomic output."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from megatron.data.indexed_dataset import MMapIndexedDataset  # noqa: E402
from tools import preprocess_data as pre  # noqa: E402

TOOLS = ROOT / "tools"

SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
REF = SHARED / "neox-reference"
GPT2 = str(SHARED / "gpt2-tokenizer.json")


def _run(tmp_path: Path, inputs: str, *extra: str, prefix: str = "out") -> int:
    return pre.main(["--input", inputs, "--output-prefix", str(tmp_path / prefix),
                     "--tokenizer-type", "HFTokenizer", "--vocab-file", GPT2, *extra])


def _assert_reference_bytes(tmp_path: Path, prefix: str) -> None:
    for suffix in (".bin", ".idx"):
        got = (tmp_path / f"{prefix}_text_document{suffix}").read_bytes()
        assert got == (REF / f"enwik8_first100_text_document{suffix}").read_bytes(), suffix


def test_byte_identical_to_gpt_neox_one_worker(tmp_path: Path) -> None:
    code = _run(tmp_path, str(REF / "enwik8_first100.jsonl"), "--append-eod", "--workers", "1",
                "--jsonl-keys", "text", prefix="enwik8_first100")
    assert code == 0
    _assert_reference_bytes(tmp_path, "enwik8_first100")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "enwik8_first100_text_document.bin", "enwik8_first100_text_document.idx"]


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_byte_identical_to_gpt_neox_two_workers_as_a_script(tmp_path: Path) -> None:
    cmd = [sys.executable, str(TOOLS / "preprocess_data.py"), "--input",
           str(REF / "enwik8_first100.jsonl"), "--output-prefix", str(tmp_path / "w2"),
           "--tokenizer-type", "HFTokenizer", "--vocab-file", GPT2, "--append-eod",
           "--workers", "2", "--chunk-size", "3", "--jsonl-keys", "text"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    assert "Processed 10 documents, 1544 tokens" in done.stdout
    _assert_reference_bytes(tmp_path, "w2")


def _records() -> list[dict]:
    return [json.loads(x) for x in (REF / "enwik8_first100.jsonl").read_text().splitlines()]


def test_compressed_inputs_and_folders(tmp_path: Path) -> None:
    lines = (REF / "enwik8_first100.jsonl").read_bytes()
    half = lines.splitlines(keepends=True)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(half[:4])))
    with gzip.open(folder / "sub" / "b.json.gz", "wb") as f:
        f.write(b"".join(half[4:]))
    (folder / "notes.md").write_text("ignored: not an input suffix")
    assert _run(tmp_path, str(folder), "--append-eod", "--chunk-size", "2") == 0
    _assert_reference_bytes(tmp_path, "out")


def test_bad_lines_are_skipped_and_reported(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "hello"}\n{not json\n{"other": 1}\n\n{"text": ""}\n'
                   '{"text": "world"}\n')
    assert _run(tmp_path, str(src)) == 0
    out = capsys.readouterr().out
    assert "Skipped 2 bad lines" in out
    assert f"{src}:2: invalid JSON" in out
    assert f"{src}:3: missing key 'text'" in out
    ds = MMapIndexedDataset(tmp_path / "out_text_document")
    assert [ds.get(i).tolist() for i in range(len(ds))] == [[31373], [6894]]  # hello, world


def test_strict_fails_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "hello"}\n[1, 2]\n')
    assert _run(tmp_path, str(src), "--strict") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_several_keys_give_one_dataset_each(tmp_path: Path) -> None:
    src = tmp_path / "two.jsonl"
    src.write_text(json.dumps({"q": "hello", "a": "world"}) + "\n")
    assert _run(tmp_path, str(src), "--jsonl-keys", "q", "a", "--append-eod") == 0
    q = MMapIndexedDataset(tmp_path / "out_q_document")
    a = MMapIndexedDataset(tmp_path / "out_a_document")
    assert q.get(0).tolist() == [31373, 50256]
    assert a.get(0).tolist() == [6894, 50256]


def test_text_files_are_one_document(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("hello world")
    assert _run(tmp_path, str(tmp_path / "doc.txt")) == 0
    ds = MMapIndexedDataset(tmp_path / "out_text_document")
    assert ds.get(0).tolist() == [31373, 995]
    assert ds.doc_idx.tolist() == [0, 1]


def test_ftfy_fixes_mojibake(tmp_path: Path) -> None:
    src = tmp_path / "m.jsonl"
    src.write_text(json.dumps({"text": "cafÃ©"}) + "\n")
    assert _run(tmp_path, str(src), "--ftfy") == 0
    ds = MMapIndexedDataset(tmp_path / "out_text_document")
    from megatron.tokenizer import build_tokenizer

    assert build_tokenizer("HFTokenizer", GPT2).detokenize(ds.get(0).tolist()) == "café"


def test_usage_errors(tmp_path: Path) -> None:
    assert _run(tmp_path, str(tmp_path / "missing.jsonl")) == 1
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    code = pre.main(["--input", str(tmp_path / "x.jsonl"), "--output-prefix",
                     str(tmp_path / "o"), "--tokenizer-type", "NoSuchTokenizer"])
    assert code == 2


def test_decoded_reference_tokens_give_back_the_text() -> None:
    from megatron.tokenizer import build_tokenizer

    ds = MMapIndexedDataset(REF / "enwik8_first100_text_document")
    tok = build_tokenizer("HFTokenizer", GPT2)
    texts = [r["text"] for r in _records()]
    assert [tok.detokenize(ds.get(i).tolist()[:-1]) for i in range(10)] == texts
    assert all(int(ds.get(i)[-1]) == 50256 for i in range(10))
    assert np.sum(ds.sizes) == 1544
