"""Tokenize text into Megatron ``.bin/.idx`` datasets (GPT-NeoX's preprocess_data.py flags).

    python tools/preprocess_data.py --input data/a.jsonl,data/more/ \\
        --output-prefix data/mydata --tokenizer-type HFTokenizer --vocab-file tok.json \\
        --append-eod --workers 4

Inputs are ``.jsonl`` (optionally ``.zst``/``.gz``, also ``.json.gz``) with one JSON object per
line, ``.txt`` files (one document each), or folders of those. Each ``--jsonl-keys`` key gives
``{prefix}_{key}_document.{bin,idx}``. Bad lines (invalid JSON, a missing key) are skipped,
counted and reported with their line numbers; ``--strict`` makes the first one fatal. Output
appears under its final name only when complete.

Speed: the main process reads raw lines in chunks; worker processes parse, tokenize with the
tokenizer's batch encoder and send back one numpy array per chunk, in input order.
"""

from __future__ import annotations

import argparse
import gzip
import io
import itertools
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

try:
    import megatron  # noqa: F401
except ImportError:  # run as `python tools/preprocess_data.py`: put the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron.data.errors import DataError
from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder, best_fitting_dtype
from megatron.tokenizer import TokenizerError, build_tokenizer, tokenizer_types

JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.gz", ".json.gz", ".json.zst")
TEXT_SUFFIXES = (".txt",)
MAX_REPORTED = 20


@dataclass
class Chunk:
    """Raw input handed to a worker: jsonl lines (with the first line number) or one text."""

    source: str
    first_line: int
    lines: list[bytes]
    is_text: bool = False


@dataclass
class Encoded:
    """A worker's answer: per key the tokens and document lengths, plus bookkeeping."""

    tokens: dict[str, tuple[np.ndarray, np.ndarray]]
    docs: int
    nbytes: int
    bad: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading input


def expand_inputs(spec: str) -> list[Path]:
    """Comma-separated files and folders -> the input files, folders walked in sorted order."""
    files: list[Path] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        path = Path(part)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and _supported(p))
        elif path.is_file():
            if not _supported(path):
                raise DataError(f"input {path}: unsupported suffix; expected one of "
                                f"{JSONL_SUFFIXES + TEXT_SUFFIXES}")
            files.append(path)
        else:
            raise DataError(f"input {path} does not exist")
    if not files:
        raise DataError(f"--input {spec!r} names no input files")
    return files


def _supported(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES + TEXT_SUFFIXES)


def _open_binary(path: Path) -> BinaryIO:
    """Open a file for reading, decompressing ``.gz`` and ``.zst`` on the fly."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 (closed through the wrapper)
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")  # noqa: SIM115


def read_chunks(files: list[Path], max_lines: int, max_bytes: int = 4 << 20) -> Iterator[Chunk]:
    """Yield raw chunks of at most ``max_lines`` lines / ~``max_bytes`` bytes, in input order."""
    for path in files:
        if path.name.endswith(TEXT_SUFFIXES):
            yield Chunk(str(path), 1, [path.read_bytes()], is_text=True)
            continue
        with _open_binary(path) as f:
            lines: list[bytes] = []
            first, size = 1, 0
            for number, line in enumerate(f, start=1):
                lines.append(line)
                size += len(line)
                if len(lines) >= max_lines or size >= max_bytes:
                    yield Chunk(str(path), first, lines)
                    lines, first, size = [], number + 1, 0
            if lines:
                yield Chunk(str(path), first, lines)


# ----------------------------------------------------------------------------- worker side

_STATE: dict[str, Any] = {}


def init_worker(tokenizer_args: dict[str, Any], options: dict[str, Any]) -> None:
    """Build this process's tokenizer once (pool initializer, also used in-process)."""
    _STATE["tokenizer"] = build_tokenizer(**tokenizer_args)
    _STATE.update(options)


def _texts_of(line: bytes, keys: list[str]) -> list[str] | str:
    """The text of each key in one jsonl line, or a reason why the line is unusable."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        return f"invalid JSON ({exc})"
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    texts = []
    for key in keys:
        if key not in record:
            return f"missing key {key!r}"
        value = record[key]
        if isinstance(value, list):  # lm_dataformat joins paragraph lists with a blank line
            value = "\n\n".join(str(v) for v in value)
        if not isinstance(value, str):
            return f"key {key!r} holds {type(value).__name__}, expected text"
        texts.append(value)
    return texts


def encode_chunk(chunk: Chunk) -> Encoded:
    """Parse, clean and tokenize a chunk; returns flat token arrays per key."""
    keys: list[str] = _STATE["keys"]
    docs: list[list[str]] = []
    bad: list[str] = []
    if chunk.is_text:
        docs.append([chunk.lines[0].decode("utf-8", errors="replace")] * len(keys))
    else:
        for number, line in enumerate(chunk.lines, start=chunk.first_line):
            if not line.strip():
                continue
            texts = _texts_of(line, keys)
            if isinstance(texts, str):
                bad.append(f"{chunk.source}:{number}: {texts}")
            elif any(texts):  # GPT-NeoX drops empty documents
                docs.append(texts)
    if _STATE["ftfy"]:
        import ftfy

        docs = [[ftfy.fix_text(t) for t in texts] for texts in docs]
    columns = list(zip(*docs, strict=True)) if docs else [() for _ in keys]
    tokens = {key: _tokenize(column) for key, column in zip(keys, columns, strict=True)}
    nbytes = sum(len(line) for line in chunk.lines)
    return Encoded(tokens, len(docs), nbytes, bad)


def _tokenize(texts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Batch-tokenize, optionally append eod, and flatten to (tokens, lengths)."""
    ids = _STATE["tokenizer"].tokenize_batch(list(texts))
    if _STATE["append_eod"]:
        eod = _STATE["tokenizer"].eod
        for doc in ids:
            doc.append(eod)
    lengths = np.fromiter((len(d) for d in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=_STATE["dtype"],
                       count=int(lengths.sum()))
    return flat, lengths


# ----------------------------------------------------------------------------- main process


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    """GPT-NeoX's flags, plus --strict and --chunk-size."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True,
                   help="comma-separated .jsonl/.jsonl.zst/.json.gz/.txt files or folders")
    g.add_argument("--jsonl-keys", nargs="+", default=["text"],
                   help="keys to extract (space or comma separated); one dataset per key")
    g.add_argument("--num-docs", type=int, default=None, help="documents expected (progress)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, help=f"one of {tokenizer_types()}")
    g.add_argument("--vocab-file", default=None, help="vocab / tokenizer file")
    g.add_argument("--merge-file", default=None, help="BPE merges file (GPT2BPETokenizer)")
    g.add_argument("--append-eod", action="store_true", help="append eod to every document")
    g.add_argument("--ftfy", action="store_true", help="fix text with ftfy first")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="output path without suffix")
    g.add_argument("--dataset-impl", default="mmap", choices=["mmap"],
                   help="only mmap (GPT-NeoX's default) is written")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--log-interval", type=int, default=100, help="documents between updates")
    g.add_argument("--chunk-size", type=int, default=256, help="lines sent to a worker at once")
    g.add_argument("--strict", action="store_true", help="stop at the first bad input line")
    args = p.parse_args(argv)
    args.jsonl_keys = [k for item in args.jsonl_keys for k in item.split(",") if k]
    if args.workers < 1 or args.chunk_size < 1 or args.log_interval < 1:
        p.error("--workers, --chunk-size and --log-interval must be at least 1")
    return args


def _bounded(chunks: Iterator[Chunk], slots: threading.Semaphore) -> Iterator[Chunk]:
    """Let the reader run only a few chunks ahead of the writer (the pool reads eagerly)."""
    for chunk in chunks:
        slots.acquire()
        yield chunk


class Progress:
    """Counts and rates for the progress bar and the final summary."""

    def __init__(self, total: int | None, interval: int) -> None:
        from tqdm import tqdm

        self.start = time.perf_counter()
        self.docs = self.nbytes = self.tokens = 0
        self.bad: list[str] = []
        self.bad_count = 0
        self.interval = interval
        self._last = 0
        self.bar = tqdm(total=total, unit="docs", dynamic_ncols=True)

    def add(self, result: Encoded) -> None:
        self.docs += result.docs
        self.nbytes += result.nbytes
        self.tokens += sum(int(len(t)) for t, _ in result.tokens.values())
        self.bad_count += len(result.bad)
        self.bad += result.bad[: max(0, MAX_REPORTED - len(self.bad))]
        if self.docs - self._last >= self.interval:
            self.bar.update(self.docs - self._last)
            self._last = self.docs
            self.bar.set_postfix_str(self.rates())

    def rates(self) -> str:
        secs = max(time.perf_counter() - self.start, 1e-9)
        return (f"{self.docs / secs:.1f} docs/s, {self.nbytes / secs / 2**20:.2f} MB/s, "
                f"{self.tokens / secs:.0f} tokens/s")

    def close(self) -> None:
        self.bar.update(self.docs - self._last)
        self.bar.close()


def _summary(progress: Progress, outputs: list[str]) -> str:
    secs = time.perf_counter() - progress.start
    lines = [f"Processed {progress.docs} documents, {progress.tokens} tokens, "
             f"{progress.nbytes / 2**20:.2f} MB in {secs:.2f} s ({progress.rates()})."]
    if progress.bad_count:
        lines.append(f"Skipped {progress.bad_count} bad lines:")
        lines += [f"  {b}" for b in progress.bad]
        if progress.bad_count > len(progress.bad):
            lines.append(f"  ... and {progress.bad_count - len(progress.bad)} more")
    lines += [f"Wrote {o}" for o in outputs]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    """Tokenize every input into the output datasets; returns the summary text."""
    files = expand_inputs(args.input)
    tok_args = {"tokenizer_type": args.tokenizer_type, "vocab_file": args.vocab_file,
                "merge_file": args.merge_file}
    tokenizer = build_tokenizer(**tok_args)
    dtype = best_fitting_dtype(tokenizer.vocab_size)
    if args.append_eod:
        _ = tokenizer.eod  # fail now, not in a worker, when the tokenizer has none
    options = {"keys": args.jsonl_keys, "append_eod": args.append_eod, "ftfy": args.ftfy,
               "dtype": dtype}
    stems = {k: f"{args.output_prefix}_{k}_document" for k in args.jsonl_keys}
    Path(args.output_prefix).parent.mkdir(parents=True, exist_ok=True)
    builders = {k: MMapIndexedDatasetBuilder(f"{s}.bin", dtype) for k, s in stems.items()}
    slots = threading.Semaphore(4 * args.workers + 4)
    chunks = _bounded(read_chunks(files, args.chunk_size), slots)
    progress = Progress(args.num_docs, args.log_interval)
    pool = None
    try:
        if args.workers > 1:
            pool = multiprocessing.Pool(args.workers, init_worker, (tok_args, options))
            results: Iterator[Encoded] = pool.imap(encode_chunk, chunks)
        else:
            init_worker(tok_args, options)
            results = map(encode_chunk, chunks)
        for result in results:
            slots.release()
            if result.bad and args.strict:
                raise DataError(f"bad input line (--strict): {result.bad[0]}")
            for key, (tokens, lengths) in result.tokens.items():
                builders[key].add_documents(tokens, lengths)
            progress.add(result)
        for key, stem in stems.items():
            builders[key].finalize(f"{stem}.idx")
    except BaseException:
        for builder in builders.values():
            builder.abort()
        raise
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
    return _summary(progress, [f"{s}.{{bin,idx}}" for s in stems.values()])


def main(argv: list[str] | None = None) -> int:
    """Parse flags, tokenize, print a summary. Exit 2 on usage errors, 1 on data errors."""
    args = get_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker
    try:
        print(run(args))
    except TokenizerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
