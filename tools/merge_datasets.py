"""Concatenate several ``.bin/.idx`` datasets into one (documents and doc_idx included).

    python tools/merge_datasets.py --input data/a_text_document,data/b_text_document \\
        --output-prefix data/ab_text_document

``--input`` takes comma-separated prefixes or folders (every ``*.idx`` in a folder, sorted).
All inputs must share one token dtype. The output appears only when complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import megatron  # noqa: F401
except ImportError:  # run as `python tools/merge_datasets.py`: put the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron.data.errors import DataError
from megatron.data.indexed_dataset import MMapIndexedDataset, MMapIndexedDatasetBuilder


def input_prefixes(spec: str) -> list[str]:
    """Comma-separated prefixes or folders -> dataset prefixes, in the given order."""
    prefixes: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        path = Path(part)
        if path.is_dir():
            prefixes += [str(p.with_suffix("")) for p in sorted(path.glob("*.idx"))]
        else:
            prefixes.append(part[:-4] if part.endswith((".bin", ".idx")) else part)
    if not prefixes:
        raise DataError(f"--input {spec!r} names no datasets")
    for prefix in prefixes:
        if not MMapIndexedDataset.exists(prefix):
            raise DataError(f"dataset {prefix}: {prefix}.bin or {prefix}.idx does not exist")
    return prefixes


def merge(prefixes: list[str], output_prefix: str) -> MMapIndexedDataset:
    """Write ``output_prefix.{bin,idx}`` holding every input's documents, in order."""
    dtype = MMapIndexedDataset(prefixes[0]).dtype
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)
    builder = MMapIndexedDatasetBuilder(f"{output_prefix}.bin", dtype=dtype)
    try:
        for prefix in prefixes:
            builder.merge_file_(prefix)
        builder.finalize(f"{output_prefix}.idx")
    except BaseException:
        builder.abort()
        raise
    return MMapIndexedDataset(output_prefix)


def main(argv: list[str] | None = None) -> int:
    """Merge; exit 1 on a data problem (missing input, mixed dtypes)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="comma-separated prefixes or folders")
    parser.add_argument("--output-prefix", required=True, help="output path without suffix")
    args = parser.parse_args(argv)
    try:
        prefixes = input_prefixes(args.input)
        out = merge(prefixes, args.output_prefix)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Merged {len(prefixes)} datasets: {len(out.doc_idx) - 1} documents, "
          f"{int(out.sizes.sum())} tokens -> {args.output_prefix}.{{bin,idx}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
