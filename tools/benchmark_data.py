"""Benchmark the data pipeline: tokenizer, preprocess_data at 1 and 2 workers, index maps.

    python tools/benchmark_data.py --tokenizer-type HFTokenizer --vocab-file tok.json \\
        [--input corpus.jsonl] [--docs 20000] [--index-docs 10000000]

Without ``--input`` a synthetic jsonl of pseudo-English documents is generated. Prints MB/s and
tokens/s for the bare tokenizer on one core (batch encoder, no parsing, no writing) and for
preprocess_data with 1 and 2 workers (per worker as a share of the bare speed), then the time
to build GPT2Dataset's index maps for ``--index-docs`` documents of ~100 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # measure one core per process

try:
    import megatron  # noqa: F401
except ImportError:  # run as `python tools/benchmark_data.py`: put the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from megatron.data.index_maps import build_index_maps
from megatron.tokenizer import build_tokenizer

try:
    from tools import preprocess_data
except ImportError:
    import preprocess_data  # type: ignore[no-redef]


def synthetic_jsonl(path: Path, docs: int, seed: int = 0) -> None:
    """Pseudo-English documents of 50-400 words from a fixed random vocabulary."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = ["".join(rng.choices(letters, k=rng.randint(1, 9))) for _ in range(5000)]
    with open(path, "w") as f:
        for _ in range(docs):
            text = " ".join(rng.choices(words, k=rng.randint(50, 400)))
            f.write(json.dumps({"text": text.capitalize() + "."}) + "\n")


def bare_tokenizer(args: argparse.Namespace, texts: list[str]) -> tuple[float, float]:
    """(MB/s, tokens/s) of tokenize_batch alone, in this process, in 256-document batches."""
    tok = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file)
    nbytes = sum(len(t.encode()) for t in texts)
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), 256):
        tokens += sum(len(ids) for ids in tok.tokenize_batch(texts[i:i + 256]))
    secs = time.perf_counter() - start
    return nbytes / secs / 2**20, tokens / secs


def preprocess(args: argparse.Namespace, path: Path, workers: int, out: Path) -> float:
    """Wall seconds of a preprocess_data run (tokenizer loading included)."""
    argv = ["--input", str(path), "--output-prefix", str(out / f"w{workers}"),
            "--tokenizer-type", args.tokenizer_type, "--append-eod", "--workers", str(workers),
            "--log-interval", "1000000"]
    argv += ["--vocab-file", args.vocab_file] if args.vocab_file else []
    argv += ["--merge-file", args.merge_file] if args.merge_file else []
    start = time.perf_counter()
    preprocess_data.run(preprocess_data.get_args(argv))
    return time.perf_counter() - start


def index_build_seconds(docs: int) -> tuple[float, int]:
    """Seconds to build packed index maps for ``docs`` documents (1-199 tokens each)."""
    sizes = np.random.RandomState(0).randint(1, 200, size=docs).astype(np.int32)
    samples = int(sizes.sum()) // 2048
    start = time.perf_counter()
    build_index_maps(np.arange(docs, dtype=np.int32), sizes, samples, 2048, 1234)
    return time.perf_counter() - start, int(sizes.sum())


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print them."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer-type", default="CharLevelTokenizer")
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--merge-file", default=None)
    p.add_argument("--input", default=None, help="a .jsonl file (default: synthetic)")
    p.add_argument("--docs", type=int, default=20000, help="synthetic documents")
    p.add_argument("--index-docs", type=int, default=10_000_000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        path = Path(args.input) if args.input else out / "synthetic.jsonl"
        if not args.input:
            synthetic_jsonl(path, args.docs)
        texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
        mbs, tps = bare_tokenizer(args, texts)
        mb = path.stat().st_size / 2**20
        print(f"input: {len(texts)} documents, {mb:.1f} MB; tokenizer {args.tokenizer_type}")
        print(f"bare tokenizer (1 core): {mbs:8.2f} MB/s {tps:12.0f} tokens/s")
        for workers in (1, 2):
            secs = preprocess(args, path, workers, out)
            rate = mb / secs
            print(f"preprocess --workers {workers}: {rate:8.2f} MB/s "
                  f"({rate / workers / mbs:.0%} of bare per worker, {secs:.2f} s incl. start-up)")
    secs, ntok = index_build_seconds(args.index_docs)
    print(f"index maps for {args.index_docs} documents / {ntok} tokens: {secs:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
