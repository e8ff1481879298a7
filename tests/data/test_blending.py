"""Blending, split boundaries, sample counts and the dataset builder from a config."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from megatron.data.blendable_dataset import BlendableDataset, build_blending_indices
from megatron.data.data_utils import (
    DataConfig,
    build_train_valid_test_datasets,
    normalized_weights_and_num_samples,
    num_samples_for,
    split_boundaries,
    weights_by_num_docs,
)
from megatron.data.errors import DataError
from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder


def test_blending_first_steps_by_hand() -> None:
    # step 0 (counted as 1): errors .5, .3, .2 -> 0; step 1: -.5, .3, .2 -> 1;
    # step 2: 0, -.4, .4 -> 2; step 3: .5, -.1, -.4 -> 0; step 4: 0, .2, -.2 -> 1.
    index, sample = build_blending_indices([0.5, 0.3, 0.2], 5)
    assert index.tolist() == [0, 1, 2, 0, 1]
    assert sample.tolist() == [0, 0, 0, 1, 1]


def test_blending_proportions_within_one_percent() -> None:
    weights = [0.6, 0.25, 0.1, 0.05]
    index, sample = build_blending_indices(weights, 10_000)
    counts = np.bincount(index, minlength=4) / 10_000
    assert np.all(np.abs(counts - weights) < 0.01)
    for d in range(4):  # each dataset's samples are taken in order 0, 1, 2, ...
        assert sample[index == d].tolist() == list(range(int((index == d).sum())))


class Const:
    def __init__(self, value: int, n: int) -> None:
        self.value, self.n = value, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        assert 0 <= i < self.n
        return {"text": np.array([self.value, i])}


def test_blendable_dataset_serves_by_weight() -> None:
    blend = BlendableDataset([Const(7, 3000), Const(9, 7000)], [3, 7])
    values = np.array([blend[i]["text"][0] for i in range(len(blend))])
    assert len(blend) == 10_000
    assert abs((values == 7).mean() - 0.3) < 0.01


def test_blendable_rejects_mismatched_weights() -> None:
    with pytest.raises(DataError, match="2 datasets but 1 weights"):
        BlendableDataset([Const(1, 2), Const(2, 2)], [1.0])


@pytest.mark.parametrize(("split", "size", "expected"), [
    ("969, 30, 1", 1000, [0, 969, 999, 1000]),
    ("98/2", 100, [0, 98, 100, 100]),
    # 3.33 rounds to 3: [0, 3, 6, 9] ends 1 short, so every boundary after 0 moves up by 1.
    ("1,1,1", 10, [0, 4, 7, 10]),
    ("1", 5, [0, 5, 5, 5]),
    ("2,1", 10, [0, 7, 10, 10]),  # 6.67 -> 7, 3.33 -> 3, nothing left over
])
def test_split_boundaries(split: str, size: int, expected: list[int]) -> None:
    assert split_boundaries(split, size) == expected


def test_split_rejects_garbage() -> None:
    with pytest.raises(DataError, match="'a,b'"):
        split_boundaries("a,b", 10)


def test_num_samples_for() -> None:
    # train 100 x 8; valid (100 // 30 + 1) = 4 evaluations x 5 iters x 8; test 5 x 8.
    assert num_samples_for(100, 30, 5, 8) == (800, 160, 40)


def test_weights_helpers() -> None:
    weights, samples = normalized_weights_and_num_samples([1, 3], 1000)
    assert weights == [0.25, 0.75]
    assert samples == [252, 754]  # ceil(250 * 1.005) = 252, ceil(750 * 1.005) = 754
    # counts 1 and 3, alpha 1: p = .25/.75, times (1 - p) = .1875/.1875 -> equal weights.
    assert weights_by_num_docs([1, 3], alpha=1.0) == pytest.approx([0.5, 0.5])


def _corpus(tmp_path: Path, name: str, docs: int, value: int) -> str:
    builder = MMapIndexedDatasetBuilder(tmp_path / f"{name}.bin", dtype=np.uint16)
    for d in range(docs):
        builder.add_item([value] * (5 + d % 3))
        builder.end_document()
    builder.finalize(tmp_path / f"{name}.idx")
    return str(tmp_path / name)


def test_from_args_is_duck_typed() -> None:
    args = SimpleNamespace(data_path=None, train_data_paths=["a", "b"],
                           train_data_weights=[1, 2], pack_impl="unpacked", hidden_size=64)
    cfg = DataConfig.from_args(args)
    assert cfg.train_data_paths == ("a", "b") and cfg.pack_impl == "unpacked"
    assert cfg.split == "969, 30, 1"


def test_build_from_data_path_and_split(tmp_path: Path) -> None:
    prefix = _corpus(tmp_path, "c", 20, 3)
    cfg = DataConfig(data_path=prefix, split="8,1,1")
    train, valid, test = build_train_valid_test_datasets(cfg, (30, 4, 2), 4, 1234)
    assert train.doc_idx.max() < 16 and valid.doc_idx.min() >= 16
    assert set(test.doc_idx.tolist()) == {18, 19}
    assert len(train) >= 30
    assert Path(f"{prefix}_train_indexmap_30ns_4sl_1234s_packedpi_ac_doc_idx.npy").exists()


def test_build_blended_from_paths(tmp_path: Path) -> None:
    a, b = _corpus(tmp_path, "a", 10, 1), _corpus(tmp_path, "b", 10, 2)
    cfg = DataConfig(train_data_paths=(a, b), train_data_weights=(1.0, 3.0),
                     valid_data_paths=(a,))
    train, valid, test = build_train_valid_test_datasets(cfg, (400, 20, 0), 4, 7)
    assert test is None
    first = np.array([train[i]["text"][0] for i in range(400)])
    assert abs((first == 2).mean() - 0.75) < 0.01
    assert Path(f"{b}_train_1_indexmap_302ns_4sl_7s_packedpi_ac_sample_idx.npy").exists()
    assert len(valid) >= 20


def test_no_data_configured() -> None:
    with pytest.raises(DataError, match="no training data"):
        build_train_valid_test_datasets(DataConfig(), (1, 1, 1), 4, 1)
