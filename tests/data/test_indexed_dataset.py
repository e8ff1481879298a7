"""The .bin/.idx reader and writer against files GPT-NeoX wrote, and their error messages."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from megatron.data.errors import DataError
from megatron.data.indexed_dataset import (
    MMapIndexedDataset,
    MMapIndexedDatasetBuilder,
    best_fitting_dtype,
    make_builder,
)

# Hand-read from the reference .idx with xxd: ten one-item documents.
REF_SIZES = [239, 186, 151, 154, 120, 137, 172, 120, 107, 158]


def test_reads_reference_index(corpus: str) -> None:
    ds = MMapIndexedDataset(corpus)
    assert len(ds) == 10
    assert ds.dtype == np.uint16
    assert ds.sizes.tolist() == REF_SIZES
    assert ds.doc_idx.tolist() == list(range(11))
    assert ds.pointers[:3].tolist() == [0, 478, 850]  # byte offsets: 2 * cumulative sizes
    # First GPT-2 ids of '<mediawiki xmlns="http...' (decoded independently below).
    assert ds.get(0)[:3].tolist() == [27, 11431, 15466]


def test_get_is_a_view_with_offset_and_length(corpus: str) -> None:
    ds = MMapIndexedDataset(corpus)
    whole = ds.get(3)
    part = ds.get(3, offset=5, length=7)
    assert part.tolist() == whole[5:12].tolist()
    assert np.shares_memory(part, whole)  # both view the same mapping, nothing copied
    assert not part.flags.writeable
    with pytest.raises(IndexError, match="leaves item 3"):
        ds.get(3, offset=150, length=10)


def test_rewrite_gives_identical_bytes(corpus: str, tmp_path: Path, reference_dir: Path) -> None:
    ds = MMapIndexedDataset(corpus)
    out = tmp_path / "copy"
    builder = MMapIndexedDatasetBuilder(f"{out}.bin", dtype=ds.dtype)
    for i in range(len(ds)):
        builder.add_item(ds.get(i))
        builder.end_document()
    builder.finalize(f"{out}.idx")
    for suffix in (".bin", ".idx"):
        ref = (reference_dir / f"enwik8_first100_text_document{suffix}").read_bytes()
        assert (tmp_path / f"copy{suffix}").read_bytes() == ref


def test_add_documents_matches_item_by_item(tmp_path: Path) -> None:
    tokens = np.array([5, 6, 7, 8, 9, 10], dtype=np.int64)
    lengths = np.array([2, 0, 4])  # the empty document gets no item, as in GPT-NeoX
    bulk = MMapIndexedDatasetBuilder(tmp_path / "bulk.bin", dtype=np.uint16)
    bulk.add_documents(tokens, lengths)
    bulk.finalize(tmp_path / "bulk.idx")
    ds = MMapIndexedDataset(tmp_path / "bulk")
    assert ds.sizes.tolist() == [2, 4]
    assert ds.doc_idx.tolist() == [0, 1, 1, 2]
    assert ds.get(1).tolist() == [7, 8, 9, 10]


def test_multi_item_documents_and_merge(tmp_path: Path) -> None:
    a = MMapIndexedDatasetBuilder(tmp_path / "a.bin", dtype=np.int32)
    a.add_item([1, 2])
    a.add_item([3])
    a.end_document()
    a.finalize(tmp_path / "a.idx")
    b = MMapIndexedDatasetBuilder(tmp_path / "b.bin", dtype=np.int32)
    b.add_item([4, 5, 6])
    b.end_document()
    b.add_item([7])
    b.end_document()
    b.finalize(tmp_path / "b.idx")
    merged = MMapIndexedDatasetBuilder(tmp_path / "m.bin", dtype=np.int32)
    merged.merge_file_(tmp_path / "a")
    merged.merge_file_(tmp_path / "b")
    merged.finalize(tmp_path / "m.idx")
    ds = MMapIndexedDataset(tmp_path / "m")
    assert ds.sizes.tolist() == [2, 1, 3, 1]
    assert ds.doc_idx.tolist() == [0, 2, 3, 4]
    assert ds.pointers.tolist() == [0, 8, 12, 24]
    assert [t.tolist() for t in ds[0:4]] == [[1, 2], [3], [4, 5, 6], [7]]


def test_merge_refuses_other_dtype(tmp_path: Path) -> None:
    a = MMapIndexedDatasetBuilder(tmp_path / "a.bin", dtype=np.uint16)
    a.add_item([1])
    a.end_document()
    a.finalize(tmp_path / "a.idx")
    b = MMapIndexedDatasetBuilder(tmp_path / "b.bin", dtype=np.int32)
    with pytest.raises(DataError, match="uint16"):
        b.merge_file_(tmp_path / "a")


def test_nothing_visible_before_finalize(tmp_path: Path) -> None:
    builder = MMapIndexedDatasetBuilder(tmp_path / "x.bin", dtype=np.uint16)
    builder.add_item([1, 2, 3])
    assert not (tmp_path / "x.bin").exists()
    builder.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("vocab", "dtype"), [(50257, np.uint16), (65499, np.uint16),
                                               (65500, np.int32), (None, np.int32)])
def test_best_fitting_dtype(vocab: int | None, dtype: type) -> None:
    assert best_fitting_dtype(vocab) is dtype


def test_make_builder_picks_uint16_for_gpt2(tmp_path: Path) -> None:
    assert make_builder(str(tmp_path / "y.bin"), vocab_size=50257).dtype == np.uint16


def _write_idx(path: Path, magic: bytes = b"MMIDIDX\x00\x00", version: int = 1, code: int = 8,
               sizes: tuple[int, ...] = (3,)) -> None:
    n = len(sizes)
    data = struct.pack("<9sQBQQ", magic, version, code, n, n + 1)
    data += np.array(sizes, "<i4").tobytes() + np.zeros(n, "<i8").tobytes()
    data += np.arange(n + 1, dtype="<i8").tobytes()
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"magic": b"NOTANIDX\x00"}, "bad magic"),
        ({"version": 2}, "version 2 is unknown"),
        ({"code": 6}, "float type"),
        ({"code": 7}, "float type"),
        ({"code": 9}, "dtype code 9 is unknown"),
    ],
)
def test_bad_index_header(tmp_path: Path, kwargs: dict, message: str) -> None:
    _write_idx(tmp_path / "d.idx", **kwargs)
    (tmp_path / "d.bin").write_bytes(b"\x00" * 6)
    with pytest.raises(DataError, match=message):
        MMapIndexedDataset(tmp_path / "d")


def test_bin_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _write_idx(tmp_path / "d.idx", sizes=(3,))
    (tmp_path / "d.bin").write_bytes(b"\x00" * 5)  # 3 uint16 tokens need 6 bytes
    with pytest.raises(DataError, match=r"d\.bin: 5 bytes.*describes 6 bytes"):
        MMapIndexedDataset(tmp_path / "d")


def test_truncated_index(tmp_path: Path) -> None:
    _write_idx(tmp_path / "d.idx", sizes=(3, 4))
    (tmp_path / "d.idx").write_bytes((tmp_path / "d.idx").read_bytes()[:-4])
    (tmp_path / "d.bin").write_bytes(b"\x00" * 14)
    with pytest.raises(DataError, match="truncated"):
        MMapIndexedDataset(tmp_path / "d")


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.idx does not exist"):
        MMapIndexedDataset(tmp_path / "nope")
