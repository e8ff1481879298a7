"""Train a byte-level BPE tokenizer (HF ``tokenizers`` JSON) on text or jsonl files.

    python tools/train_tokenizer.py --input data/corpus.jsonl --output data/tok.json \\
        --vocab-size 8192

The result has GPT-NeoX's specials ``<|endoftext|>`` (id 0) and ``<|padding|>`` (id 1) and
loads with ``--tokenizer-type HFTokenizer --vocab-file data/tok.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

try:
    import megatron  # noqa: F401
except ImportError:  # run as `python tools/train_tokenizer.py`: put the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron.data.errors import DataError

SPECIALS = ["<|endoftext|>", "<|padding|>"]
JSONL = (".jsonl", ".jsonl.zst", ".jsonl.gz", ".json.gz", ".json.zst")
TEXT = (".txt",)


def input_files(spec: str) -> list[Path]:
    """Comma-separated files and folders (walked, sorted) -> .txt/.jsonl[.zst|.gz] files."""
    files: list[Path] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        path = Path(part)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.name.endswith(JSONL + TEXT))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input {path} does not exist")
    if not files:
        raise DataError(f"--input {spec!r} names no .txt or .jsonl files")
    return files


def _open_text(path: Path) -> Iterator[str]:
    """Lines of a possibly compressed file, decoded as UTF-8 (bad bytes replaced)."""
    import gzip
    import io

    if path.name.endswith(".gz"):
        raw = gzip.open(path, "rb")
    elif path.name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115
    else:
        raw = open(path, "rb")  # noqa: SIM115
    with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as text:
        yield from text


def iter_texts(files: list[Path], keys: list[str]) -> Iterator[str]:
    """Documents to train on: jsonl values of ``keys`` (bad lines skipped), text lines."""
    for path in files:
        is_jsonl = path.name.endswith(JSONL)
        for line in _open_text(path):
            if not is_jsonl:
                yield line
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield from (record[k] for k in keys if isinstance(record.get(k), str))


def train(files: list[Path], output: str, vocab_size: int, keys: list[str]) -> int:
    """Train, save the JSON atomically, return the vocabulary size reached."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(iter_texts(files, keys), trainer=trainer)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{output}.tmp-{os.getpid()}"
    tok.save(tmp)
    os.replace(tmp, output)
    return tok.get_vocab_size()


def main(argv: list[str] | None = None) -> int:
    """Parse flags and train; exit 1 on missing inputs."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="comma-separated .txt/.jsonl files or folders")
    p.add_argument("--output", required=True, help="tokenizer JSON to write")
    p.add_argument("--vocab-size", type=int, default=50257, help="target vocabulary size")
    p.add_argument("--jsonl-keys", nargs="+", default=["text"], help="jsonl keys to read")
    args = p.parse_args(argv)
    keys = [k for item in args.jsonl_keys for k in item.split(",") if k]
    if args.vocab_size < 256 + len(SPECIALS):
        p.error(f"--vocab-size must be at least {256 + len(SPECIALS)} (bytes + specials)")
    try:
        size = train(input_files(args.input), args.output, args.vocab_size, keys)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Trained byte-level BPE with {size} tokens -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
