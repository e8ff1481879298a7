"""GPT2Dataset and its index maps against GPT-NeoX's own output and a plain reference walk."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from megatron.data.errors import DataError
from megatron.data.gpt2_dataset import GPT2Dataset, index_map_paths, index_map_prefix
from megatron.data.index_maps import build_index_maps, build_sample_idx, num_epochs_for
from megatron.data.indexed_dataset import MMapIndexedDataset, MMapIndexedDatasetBuilder

MAPS = "enwik8_first100_text_document_train_indexmap_200ns_32sl_1234s_packedpi_ac"


def _reference_dataset(corpus: str, **kwargs: object) -> GPT2Dataset:
    ds = MMapIndexedDataset(corpus)
    return GPT2Dataset("train", corpus, np.arange(10, dtype=np.int32), ds, 200, 32, 1234,
                       **kwargs)


def test_index_maps_are_byte_identical_to_gpt_neox(corpus: str, reference_dir: Path) -> None:
    _reference_dataset(corpus)
    folder = Path(corpus).parent
    for kind in ("doc", "sample", "shuffle"):
        name = f"{MAPS}_{kind}_idx.npy"
        assert (folder / name).read_bytes() == (reference_dir / name).read_bytes(), kind


def test_served_samples_match_gpt_neox(corpus: str, reference_dir: Path) -> None:
    dataset = _reference_dataset(corpus)
    expected = np.load(reference_dir / "gpt2dataset_train_200ns_32sl_1234s_samples.npy")
    assert len(dataset) == 240
    served = np.stack([dataset[i]["text"] for i in range(len(dataset))])
    assert served.dtype == np.int64
    assert np.array_equal(served, expected)


def test_cached_maps_are_loaded_not_rebuilt(corpus: str) -> None:
    first = _reference_dataset(corpus)
    stamp = [Path(p).stat().st_mtime_ns for p in index_map_paths(
        index_map_prefix(corpus, "train", 200, 32, 1234, "packed", True))]
    second = _reference_dataset(corpus, build_index_mappings=False)
    assert isinstance(second.sample_idx, np.memmap)
    assert np.array_equal(first.sample_idx, second.sample_idx)
    stamp2 = [Path(p).stat().st_mtime_ns for p in index_map_paths(
        index_map_prefix(corpus, "train", 200, 32, 1234, "packed", True))]
    assert stamp == stamp2


def test_non_builder_times_out_with_clear_error(corpus: str) -> None:
    with pytest.raises(DataError, match="did not appear within 0 s"):
        _reference_dataset(corpus, build_index_mappings=False, wait_timeout=0.0)


def test_non_builder_waits_for_builder(corpus: str) -> None:
    results: dict[str, GPT2Dataset] = {}
    waiter = threading.Thread(target=lambda: results.setdefault(
        "w", _reference_dataset(corpus, build_index_mappings=False, wait_timeout=30.0)))
    waiter.start()
    built = _reference_dataset(corpus)
    waiter.join(timeout=30)
    assert np.array_equal(results["w"].shuffle_idx, built.shuffle_idx)


def _walk_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int,
                     num_samples: int) -> np.ndarray:
    """Straightforward token-by-token walk: where does each sample start?"""
    rows = [(0, 0)]
    d, off = 0, 0
    for _ in range(num_samples):
        remaining = seq_length  # step seq_length tokens forward from the sample start
        while True:
            left = int(sizes[doc_idx[d]]) - off
            if remaining < left:
                off += remaining
                break
            remaining -= left
            d, off = d + 1, 0
        rows.append((d, off))
    return np.array(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_idx_matches_walk_with_empty_and_short_documents(seed: int) -> None:
    rng = np.random.RandomState(seed)
    sizes = rng.randint(0, 40, size=50).astype(np.int32)
    sizes[[0, 7, 8]] = 0  # empty documents, including the very first
    doc_idx = rng.permutation(50).astype(np.int32)
    tokens = int(sizes.sum())
    seq = 7
    got = build_sample_idx(sizes, doc_idx, seq, 1, tokens)
    want = _walk_sample_idx(sizes, doc_idx, seq, (tokens - 1) // seq)
    # Row 0 is pinned to (0, 0); the walk skips empty docs only when it moves on.
    assert np.array_equal(got[1:], want[1:])
    assert got[0].tolist() == [0, 0]


@pytest.mark.parametrize(("tokens", "seq", "samples", "epochs"),
                         [(1544, 32, 200, 5), (1544, 32, 48, 1), (1544, 32, 49, 2),
                          (10, 3, 0, 1), (10, 3, 3, 1), (10, 3, 4, 2)])
def test_num_epochs(tokens: int, seq: int, samples: int, epochs: int) -> None:
    # (E * tokens - 1) // seq >= samples, smallest E: e.g. 1543 // 32 = 48, 3087 // 32 = 96.
    assert num_epochs_for(tokens, seq, samples) == epochs


def _tiny(tmp_path: Path, docs: list[list[int]], name: str = "tiny") -> str:
    builder = MMapIndexedDatasetBuilder(tmp_path / f"{name}.bin", dtype=np.int32)
    for doc in docs:
        builder.add_item(doc)
        builder.end_document()
    builder.finalize(tmp_path / f"{name}.idx")
    return str(tmp_path / name)


def test_unpacked_pads_with_minus_100(tmp_path: Path) -> None:
    prefix = _tiny(tmp_path, [[1, 2], [3, 4, 5], [6]])
    ds = GPT2Dataset("t", prefix, np.arange(3), MMapIndexedDataset(prefix), 4, 4, 7,
                     pack_impl="unpacked")
    # Sample k is document k (cycling) plus the first token of the next, padded to 5.
    by_sample = {int(ds.shuffle_idx[i]): ds[i]["text"].tolist() for i in range(len(ds))}
    assert by_sample[0] == [1, 2, 3, -100, -100]
    assert by_sample[1] == [3, 4, 5, 6, -100]
    assert by_sample[2] == [6, 1, -100, -100, -100]


def test_pack_until_overflow_keeps_documents_whole(tmp_path: Path) -> None:
    prefix = _tiny(tmp_path, [[1] * 3, [2] * 3, [3] * 4])
    doc_idx, sample_idx, _ = build_index_maps(np.arange(3), np.array([3, 3, 4]), 3, 5, 0,
                                              "pack_until_overflow")
    # With seq_length 5 (6 tokens), two 3-token documents fit one sample, a 4-token one not.
    for start, stop in zip(sample_idx[:-1, 0], sample_idx[1:, 0], strict=True):
        assert sum([3, 3, 4][d] for d in doc_idx[start:stop]) <= 6
    assert len(sample_idx) == 4
    ds = GPT2Dataset("t", prefix, np.arange(3), MMapIndexedDataset(prefix), 3, 5, 0,
                     pack_impl="pack_until_overflow")
    assert all(len(ds[i]["text"]) == 6 for i in range(len(ds)))


def test_no_chopping_refuses_when_nothing_fits(tmp_path: Path) -> None:
    prefix = _tiny(tmp_path, [[1] * 20])
    with pytest.raises(DataError, match="allow_chopped"):
        GPT2Dataset("t", prefix, np.arange(1), MMapIndexedDataset(prefix), 2, 4, 0,
                    pack_impl="unpacked", allow_chopped=False)


def test_labels_are_served_aligned(tmp_path: Path) -> None:
    text = _tiny(tmp_path, [[1, 2, 3, 4], [5, 6, 7, 8]], "text")
    label = _tiny(tmp_path, [[-100, -100, 3, 4], [-100, 6, 7, 8]], "label")
    ds = GPT2Dataset("t", text, np.arange(2), MMapIndexedDataset(text), 2, 3, 0,
                     label_dataset=MMapIndexedDataset(label))
    for i in range(len(ds)):
        item = ds[i]
        keep = item["label"] != -100
        assert np.array_equal(item["text"][keep], item["label"][keep])
        assert set(item["text"][~keep].tolist()) <= {1, 2, 5}


def test_unknown_pack_impl(corpus: str) -> None:
    with pytest.raises(DataError, match="pack_impl 'tight' is unknown"):
        _reference_dataset(corpus, pack_impl="tight")



def test_unwritable_cache_is_a_clear_error(corpus: str) -> None:
    # A directory squatting on the temporary name makes the write fail even for root.
    doc_map = index_map_paths(index_map_prefix(corpus, "train", 200, 32, 1234, "packed", True))[0]
    Path(f"{doc_map}.tmp-{os.getpid()}").mkdir()
    with pytest.raises(DataError, match="cannot write index map .*doc_idx.npy"):
        _reference_dataset(corpus)
