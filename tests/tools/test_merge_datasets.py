"""merge_datasets.py: concatenation of .bin/.idx datasets, doc_idx included."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from megatron.data.indexed_dataset import (  # noqa: E402
    MMapIndexedDataset,
    MMapIndexedDatasetBuilder,
)
from tools import merge_datasets  # noqa: E402

REF = (ROOT / ".." / "shared" / "data" / "neox-reference").resolve()


def _write(prefix: Path, docs: list[list[list[int]]], dtype: type = np.uint16) -> None:
    builder = MMapIndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in docs:
        for item in doc:
            builder.add_item(item)
        builder.end_document()
    builder.finalize(f"{prefix}.idx")


def test_merge_two_datasets(tmp_path: Path) -> None:
    _write(tmp_path / "a", [[[1, 2], [3]], [[4]]])
    _write(tmp_path / "b", [[[5, 6, 7]]])
    code = merge_datasets.main(["--input", f"{tmp_path / 'a'},{tmp_path / 'b'}",
                                "--output-prefix", str(tmp_path / "out" / "m")])
    assert code == 0
    ds = MMapIndexedDataset(tmp_path / "out" / "m")
    assert ds.doc_idx.tolist() == [0, 2, 3, 4]
    assert ds.sizes.tolist() == [2, 1, 1, 3]
    assert [ds.get(i).tolist() for i in range(4)] == [[1, 2], [3], [4], [5, 6, 7]]


def test_merging_reference_with_itself_doubles_it(tmp_path: Path) -> None:
    prefix = str(REF / "enwik8_first100_text_document")
    assert merge_datasets.main(["--input", f"{prefix},{prefix}.idx",
                                "--output-prefix", str(tmp_path / "twice")]) == 0
    ref_bin = (REF / "enwik8_first100_text_document.bin").read_bytes()
    assert (tmp_path / "twice.bin").read_bytes() == ref_bin * 2
    ds = MMapIndexedDataset(tmp_path / "twice")
    assert ds.doc_idx.tolist() == list(range(21))
    assert ds.pointers[10] == len(ref_bin)


def test_folder_input_and_errors(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "x", [[[1]]])
    _write(tmp_path / "in" / "y", [[[2]]])
    assert merge_datasets.main(["--input", str(tmp_path / "in"),
                                "--output-prefix", str(tmp_path / "xy")]) == 0
    assert MMapIndexedDataset(tmp_path / "xy").get(1).tolist() == [2]
    _write(tmp_path / "wide", [[[3]]], dtype=np.int32)
    code = merge_datasets.main(["--input", f"{tmp_path / 'in' / 'x'},{tmp_path / 'wide'}",
                                "--output-prefix", str(tmp_path / "bad")])
    assert code == 1
    assert not list(tmp_path.glob("bad*"))
    assert merge_datasets.main(["--input", str(tmp_path / "nothing"),
                                "--output-prefix", str(tmp_path / "n")]) == 1
