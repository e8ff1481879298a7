"""The corpus catalogue and the machinery that fetches corpora: download, verify, unpack.

Split from ``tools/corpora.py`` (the command line and the tokenization steps) to keep both
files short. Only the standard library is used for HTTP (``urllib``), so downloads work before
any optional package is installed; ``zstandard`` is imported only to open ``.zst`` files and
``tqdm`` only to draw a progress bar.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import logging
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("corpora")

CHUNK_BYTES = 1 << 20
USER_AGENT = "neox-trainer-corpora/0.1"
_EYE = "https://the-eye.eu/public/AI/pile_preliminary_components"


class CorpusError(Exception):
    """A corpus cannot be fetched or prepared.

    The message names the URL or file, what went wrong and how to go on (often: how to work
    without network), so that the user never has to read this code.
    """


@dataclass(frozen=True)
class Remote:
    """One file to download, with what we know about it for verification."""

    url: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Corpus:
    """A catalogue entry: where the corpus lives and how to tokenize it."""

    name: str
    remotes: tuple[Remote, ...] = ()
    workers: int | None = None  # None: one per CPU; enwik8 is a single document, so 1


def _corpus(name: str, *urls: str, workers: int | None = None) -> Corpus:
    return Corpus(name, tuple(Remote(u) for u in urls), workers)


_PILE = "https://the-eye.eu/public/AI/pile/train"
_C4 = "https://huggingface.co/datasets/allenai/c4/resolve/main/en"
_REALNEWS = "https://the-eye.eu/eleuther_staging/c4/realnewslike"
# Names GPT-NeoX lists without a URL (stubs there too): use `--url` or the `local` dataset.
_NO_URL = "proof-pile arxiv-pilev2 arxiv-rp open-web-math open-web-math-hq proof-pile-v1"
_NO_URL += " pile-sample pile-sample-1 pile-sample-2 code-no-matlab"

# GPT-NeoX's catalogue (tools/datasets/corpora.py): the same names and URLs; C4 points at
# AllenAI's copy on the Hugging Face hub, which GPT-NeoX left empty.
CATALOGUE: dict[str, Corpus] = {
    c.name: c
    for c in (
        _corpus("enron", "http://eaidata.bmk.sh/data/enron_emails.jsonl.zst"),
        _corpus("pile_subset", f"{_PILE}/00.jsonl.zst"),
        _corpus("pile", *(f"{_PILE}/{i:02}.jsonl.zst" for i in range(30))),
        _corpus("github", "http://eaidata.bmk.sh/data/github_small.jsonl.zst"),
        _corpus("arxiv", f"{_EYE}/2020-09-08-arxiv-extracts-nofallback-until-2007-068.tar.gz"),
        _corpus("europarl", f"{_EYE}/EuroParliamentProceedings_1996_2011.jsonl.zst"),
        _corpus("freelaw", f"{_EYE}/FreeLaw_Opinions.jsonl.zst"),
        _corpus("nih", f"{_EYE}/NIH_ExPORTER_awarded_grant_text.jsonl.zst"),
        _corpus("pubmed", f"{_EYE}/PMC_extracts.tar.gz"),
        _corpus("books1", f"{_EYE}/books1.tar.gz"),
        _corpus("books3", f"{_EYE}/books3.tar.gz"),
        _corpus("hackernews", f"{_EYE}/hn.tar.gz"),
        _corpus("openwebtext2", f"{_EYE}/openwebtext2.jsonl.zst.tar"),
        _corpus("stackexchange", f"{_EYE}/stackexchange_dataset.tar"),
        _corpus("ubuntu_irc", f"{_EYE}/ubuntu_irc_until_2020_9_1.jsonl.zst"),
        _corpus("youtube_subtitles", f"{_EYE}/yt_subs.jsonl.zst"),
        _corpus("c4", *(f"{_C4}/c4-train.{i:05}-of-01024.json.gz" for i in range(1024))),
        _corpus(
            "c4_openwebtext", *(f"{_REALNEWS}/c4-train.{i:05}-of-00512.json.gz" for i in range(512))
        ),
        _corpus("enwik8", "https://data.deepai.org/enwik8.zip", workers=1),
        *(_corpus(name) for name in _NO_URL.split()),
    )
}


class _Interrupted(Exception):
    """The connection broke mid-transfer; the ``.part`` file holds what arrived."""


# ----------------------------------------------------------------------------- download


def download(
    remote: Remote, dest: Path, *, timeout: float = 10.0, retries: int = 3, progress: bool = True
) -> Path:
    """Download ``remote`` to ``dest``, resuming from ``dest.part`` and verifying the result.

    A file already at ``dest`` is trusted (it was verified when written, or the user placed it
    there on purpose for an offline machine). A broken connection is retried ``retries`` times,
    each retry asking for the missing bytes only (HTTP Range).

    Raises:
        CorpusError: the URL is unreachable, the server refuses, the transfer keeps breaking, or
            the size or checksum is wrong (the bad file is deleted so the next run starts afresh).
    """
    if dest.exists():
        log.info("%s: already present, not downloading", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_into(remote.url, part, timeout=timeout, progress=progress)
            break
        except _Interrupted as exc:
            got = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise CorpusError(
                    f"download of {remote.url} broke off after {got} bytes ({exc}); run the "
                    f"same command again to resume from {part}"
                ) from exc
            log.warning("%s: %s; resuming at byte %d", remote.url, exc, got)
    _verify(remote, part)
    part.replace(dest)
    return dest


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """Append the bytes of ``url`` that ``part`` lacks; raise ``_Interrupted`` when cut short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the .part file is complete
            return
        raise CorpusError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from exc
    except OSError as exc:  # URLError, refused, timed out, DNS failure
        dest = part.with_name(part.name.removesuffix(".part"))
        raise CorpusError(unreachable_message(url, exc, dest)) from exc
    with response:
        if offset and response.status != 206:  # server ignored the Range header: start over
            offset = 0
        total = _total_size(response, offset)
        received = offset
        with (
            part.open("ab" if offset else "wb") as out,
            _progress_bar(total, offset, Path(url).name, progress) as bar,
        ):
            for chunk in _chunks(response):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _Interrupted(f"the connection closed at byte {received} of {total}")


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """Yield the body in chunks; a reset or read timeout mid-body means ``_Interrupted``."""
    while True:
        try:
            chunk = response.read(CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            raise _Interrupted(str(exc) or type(exc).__name__) from exc
        if not chunk:
            return
        yield chunk


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The full file size the server announces (Content-Range for 206, else Content-Length)."""
    content_range = response.headers.get("Content-Range", "")
    if offset and "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def unreachable_message(url: str, exc: BaseException, dest: Path) -> str:
    """Say which URL failed and how to go on without network."""
    reason = getattr(exc, "reason", exc)
    return (
        f"cannot reach {url} ({reason}). Without network access: copy the file to {dest} "
        "yourself (it is then used as is), point --url at a mirror or a file:// path (or "
        "-v/-m at tokenizer files you have), or "
        "tokenize files you already have with `python tools/corpora.py local --input FILE "
        "[FILE ...] --name NAME`"
    )


def _verify(remote: Remote, path: Path) -> None:
    """Check size and SHA-256 where known; delete the file on a mismatch."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        path.unlink()
        raise CorpusError(
            f"{remote.url}: expected {remote.size} bytes, got {size}; the "
            "incomplete file was deleted, run again to download it afresh"
        )
    if remote.sha256 is not None:
        digest = sha256_of(path)
        if digest != remote.sha256.lower():
            path.unlink()
            raise CorpusError(
                f"{remote.url}: checksum mismatch: expected sha256 "
                f"{remote.sha256}, got {digest}; the corrupt file was deleted, "
                "run again to download it afresh"
            )


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so that large archives do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


class _NoBar:
    def update(self, n: int) -> None:
        """Accept progress updates when tqdm is not installed."""


def _progress_bar(
    total: int | None, initial: int, label: str, enabled: bool
) -> contextlib.AbstractContextManager:
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(_NoBar())
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=not enabled,
        file=sys.stderr,
    )


# ----------------------------------------------------------------------------- unpacking

Unpacker = Callable[[Path, Path], list[Path]]
UNPACKERS: dict[str, Unpacker] = {}
_SKIPPED_SUFFIXES = (".part", ".tmp")


def unpacker(*suffixes: str) -> Callable[[Unpacker], Unpacker]:
    """Register a function that turns files ending in one of ``suffixes`` into jsonl files."""

    def register(fn: Unpacker) -> Unpacker:
        for suffix in suffixes:
            UNPACKERS[suffix] = fn
        return fn

    return register


def unpack(path: Path, work: Path) -> list[Path]:
    """Turn a file, archive or folder into jsonl files with one ``{"text": ...}`` per line.

    Archives are extracted and compressed files expanded under ``work``, each skipped when its
    output exists. A file that is not jsonl becomes one document, as GPT-NeoX's reader treats a
    plain ``.txt`` file. ``.json`` files are read as jsonl (C4 ships its shards that way).
    """
    if path.is_dir():
        children = sorted(p for p in path.rglob("*") if p.is_file())
        return [out for child in children if not _skipped(child) for out in unpack(child, work)]
    name = path.name.lower()
    for suffix in sorted(UNPACKERS, key=len, reverse=True):  # ".tar.gz" before ".gz"
        if name.endswith(suffix):
            return UNPACKERS[suffix](path, work)
    return _text_to_jsonl(path, work)


def _skipped(path: Path) -> bool:
    return path.name.startswith(".") or path.name.endswith(_SKIPPED_SUFFIXES)


def _output_for(path: Path, work: Path, name: str) -> Path:
    """Where the expanded form of ``path`` goes: mirrored out of ``work/extracted`` or flat."""
    extracted = work / "extracted"
    if path.is_relative_to(extracted):
        return work / path.parent.relative_to(extracted) / name
    return work / name


def _write_once(out: Path, source: Path, fill: Callable[[BinaryIO], None]) -> Path:
    """Write ``out`` through ``fill`` under a temporary name, unless it already exists."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("wb") as handle:
            fill(handle)
    except Exception as exc:  # zstandard, gzip, tarfile and zipfile each raise their own type
        tmp.unlink(missing_ok=True)
        raise CorpusError(
            f"cannot unpack {source}: {exc}; delete it and run again to download it afresh"
        ) from exc
    tmp.replace(out)
    return out


@unpacker(".jsonl", ".json")
def _keep(path: Path, work: Path) -> list[Path]:
    return [path]


@unpacker(".zst")
def _unzstd(path: Path, work: Path) -> list[Path]:
    try:
        import zstandard
    except ImportError as exc:
        raise CorpusError(f"{path} is zstandard-compressed: pip install zstandard") from exc

    def fill(out: BinaryIO) -> None:
        with path.open("rb") as src:
            zstandard.ZstdDecompressor().copy_stream(src, out)

    return unpack(_write_once(_output_for(path, work, path.name[:-4]), path, fill), work)


@unpacker(".gz")
def _gunzip(path: Path, work: Path) -> list[Path]:
    def fill(out: BinaryIO) -> None:
        with gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, out, CHUNK_BYTES)

    return unpack(_write_once(_output_for(path, work, path.name[:-3]), path, fill), work)


@unpacker(".tar", ".tar.gz", ".tgz", ".zip")
def _extract(path: Path, work: Path) -> list[Path]:
    stem = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        stem = stem.removesuffix(suffix)
    target = work / "extracted" / stem
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _extract_all(path, tmp)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CorpusError(f"cannot extract {path}: {exc}") from exc
        tmp.replace(target)
    return unpack(target, work)


def _extract_all(archive: Path, into: Path) -> None:
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:  # zipfile already refuses paths outside `into`
            zf.extractall(into)
        return
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):  # refuse links and paths that leave `into`
            tf.extractall(into, filter="data")
        else:  # Python without PEP 706
            tf.extractall(into)  # noqa: S202


def _text_to_jsonl(path: Path, work: Path) -> list[Path]:
    def fill(out: BinaryIO) -> None:
        text = path.read_bytes().decode("utf-8", errors="replace")
        out.write((json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8"))

    return [_write_once(_output_for(path, work, path.name + ".jsonl"), path, fill)]
