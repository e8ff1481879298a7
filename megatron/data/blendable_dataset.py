"""BlendableDataset: interleave several datasets so each contributes its weight's share."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from megatron.data.errors import DataError

logger = logging.getLogger(__name__)


def build_blending_indices(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """GPT-NeoX's greedy blend: sample ``i`` goes to the dataset furthest behind its share.

    At step ``i`` the error of dataset ``d`` is ``w_d * max(i, 1) - taken_d``; the first dataset
    with the largest error wins (ties go to the lower index). The same float64 arithmetic as
    GPT-NeoX's C++ helper, so the order is identical.

    Returns:
        dataset_index (uint8 [size]) and dataset_sample_index (int64 [size]).
    """
    w = [float(x) for x in weights]
    taken = [0] * len(w)
    dataset_index = np.zeros(size, dtype=np.uint8)
    sample_index = np.zeros(size, dtype=np.int64)
    order = range(len(w))
    for i in range(size):
        step = float(max(i, 1))
        best = max(order, key=lambda d: (w[d] * step - taken[d], -d))
        dataset_index[i] = best
        sample_index[i] = taken[best]
        taken[best] += 1
    return dataset_index, sample_index


class BlendableDataset:
    """Samples of several datasets interleaved by weight (GPT-NeoX's BlendableDataset).

    Its length is the sum of the datasets' lengths; the weights are normalised.
    """

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float]) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise DataError(f"{len(datasets)} datasets but {len(weights)} weights; "
                            "give one weight per dataset")
        if len(datasets) >= 255:
            raise DataError(f"{len(datasets)} datasets; blending supports at most 254")
        w = np.array(weights, dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise DataError(f"blend weights {list(weights)} must be >= 0 with a positive sum")
        w /= w.sum()
        self.datasets = list(datasets)
        self.weights = w
        self.size = sum(len(d) for d in datasets)
        self.dataset_index, self.dataset_sample_index = build_blending_indices(w, self.size)
        logger.info("blended %d datasets, weights %s, %d samples",
                    len(datasets), np.round(w, 4).tolist(), self.size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        idx = int(idx) % self.size  # GPT-NeoX wraps out-of-range requests
        dataset = self.datasets[int(self.dataset_index[idx])]
        return dataset[int(self.dataset_sample_index[idx])]
