"""GPT2Dataset: fixed-length training samples cut from an indexed dataset, as GPT-NeoX serves them.

Each item is ``{"text": int64[seq_length + 1]}`` (plus ``"label"`` with a label dataset). The
index maps are cached next to the data under GPT-NeoX's file names, so a run can switch between
GPT-NeoX and this trainer and keep its data order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from megatron.data.errors import DataError
from megatron.data.index_maps import PACK_IMPLS, IndexMaps, build_index_maps
from megatron.data.indexed_dataset import MMapIndexedDataset

logger = logging.getLogger(__name__)

_MAP_NAMES = ("doc", "sample", "shuffle")


def index_map_prefix(
    data_prefix: str,
    name: str,
    num_samples: int,
    seq_length: int,
    seed: int,
    pack_impl: str,
    allow_chopped: bool,
) -> str:
    """GPT-NeoX's cache name, e.g. ``{prefix}_train_indexmap_200ns_32sl_1234s_packedpi_ac``."""
    stem = f"{data_prefix}_{name}_indexmap_{num_samples}ns_{seq_length}sl_{seed}s_{pack_impl}pi"
    return stem + ("_ac" if allow_chopped else "")


def index_map_paths(stem: str) -> list[str]:
    """The three cache files: ``{stem}_doc_idx.npy``, ``_sample_idx.npy``, ``_shuffle_idx.npy``."""
    return [f"{stem}_{kind}_idx.npy" for kind in _MAP_NAMES]


def _save_atomic(path: str, array: np.ndarray) -> None:
    """np.save to a private temporary name, then rename: readers never see a partial file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=True)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise DataError(
            f"cannot write index map {path}: {exc}; GPT-NeoX caches index maps next to the "
            "data, so its folder must be writable (or copy the data somewhere writable)"
        ) from exc


def _wait_for(paths: list[str], timeout: float) -> None:
    """Poll until another process has written ``paths``; DataError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not all(os.path.isfile(p) for p in paths):
        if time.monotonic() > deadline:
            missing = [p for p in paths if not os.path.isfile(p)]
            raise DataError(
                f"index maps {missing} did not appear within {timeout:.0f} s; the process that "
                "builds them (build_index_mappings=True, normally rank 0) failed or never ran"
            )
        time.sleep(0.2)


def load_or_build_index_maps(
    stem: str, build: bool, builder: Callable[[], IndexMaps], timeout: float = 3600.0
) -> IndexMaps:
    """Memory-map cached maps, building them first when missing and ``build`` is set."""
    paths = index_map_paths(stem)
    if not all(os.path.isfile(p) for p in paths):
        if build:
            start = time.perf_counter()
            maps = builder()
            Path(stem).parent.mkdir(parents=True, exist_ok=True)
            for path, array in zip(paths, maps, strict=True):
                _save_atomic(path, array)
            logger.info("built index maps %s in %.2f s", stem, time.perf_counter() - start)
        else:
            _wait_for(paths, timeout)
    doc_idx, sample_idx, shuffle_idx = (np.load(p, allow_pickle=True, mmap_mode="r") for p in paths)
    return doc_idx, sample_idx, shuffle_idx


class GPT2Dataset:
    """Samples of ``seq_length + 1`` tokens across document boundaries (GPT-NeoX semantics).

    Args:
        name: split name used in the cache file name ("train", "valid", "train_0", ...).
        data_prefix: prefix of the ``.bin/.idx`` pair; caches go next to it.
        documents: document ids this dataset draws from (a split's contiguous range).
        indexed_dataset: the tokens.
        num_samples: samples wanted; epochs are added until there are enough.
        seq_length: tokens per sample minus one.
        seed: seeds ``numpy.random.RandomState`` for the shuffles.
        pack_impl: "packed", "pack_until_overflow" or "unpacked".
        allow_chopped: allow documents longer than a sample to be cut.
        build_index_mappings: this process may build missing caches (give True to one rank; the
            others wait for the files). Concurrent builders are safe (atomic renames).
        label_dataset: optional dataset of labels aligned token for token with the text.
    """

    def __init__(
        self,
        name: str,
        data_prefix: str,
        documents: np.ndarray,
        indexed_dataset: MMapIndexedDataset,
        num_samples: int,
        seq_length: int,
        seed: int,
        pack_impl: str = "packed",
        allow_chopped: bool = True,
        build_index_mappings: bool = True,
        label_dataset: MMapIndexedDataset | None = None,
        wait_timeout: float = 3600.0,
    ) -> None:
        if pack_impl not in PACK_IMPLS:
            raise DataError(f"pack_impl {pack_impl!r} is unknown; expected one of {PACK_IMPLS}")
        documents = np.asarray(documents)
        if len(documents) and (documents.min() < 0 or documents.max() >= len(indexed_dataset)):
            raise DataError(f"documents outside [0, {len(indexed_dataset)}) for {data_prefix}")
        if label_dataset is not None and len(label_dataset) != len(indexed_dataset):
            raise DataError(f"label dataset has {len(label_dataset)} items, text has "
                            f"{len(indexed_dataset)}; they must align")
        self.name = name
        self.indexed_dataset = indexed_dataset
        self.label_dataset = label_dataset
        self.seq_length = seq_length
        stem = index_map_prefix(
            data_prefix, name, num_samples, seq_length, seed, pack_impl, allow_chopped
        )

        def build() -> IndexMaps:
            return build_index_maps(
                documents, indexed_dataset.sizes, num_samples, seq_length, seed,
                pack_impl, allow_chopped, label_dataset,
            )

        self.doc_idx, self.sample_idx, self.shuffle_idx = load_or_build_index_maps(
            stem, build_index_mappings, build, wait_timeout
        )
        # GPT-NeoX serves min(len(shuffle_idx), len(sample_idx)) - 1 samples; keep that count
        # so the data order and epoch length match it exactly.
        self._len = min(self.shuffle_idx.shape[0], self.sample_idx.shape[0]) - 1
        if self._len <= 0:
            raise DataError(f"dataset {name} of {data_prefix} has no samples")

    def __len__(self) -> int:
        return self._len

    def _tokens(self, dataset: MMapIndexedDataset, idx: int) -> np.ndarray:
        """Concatenate the tokens of sample ``idx`` (unshuffled) from ``dataset``."""
        first_doc, first_off = (int(v) for v in self.sample_idx[idx])
        last_doc, last_off = (int(v) for v in self.sample_idx[idx + 1])
        if first_doc == last_doc:
            doc = int(self.doc_idx[first_doc])
            return dataset.get(doc, offset=first_off, length=last_off - first_off + 1)
        parts = [dataset.get(int(self.doc_idx[first_doc]), offset=first_off)]
        parts += [dataset.get(int(self.doc_idx[i])) for i in range(first_doc + 1, last_doc)]
        if last_doc < len(self.doc_idx):  # the final unpacked sample has no next document
            doc = int(self.doc_idx[last_doc])
            parts.append(dataset.get(doc, length=min(last_off + 1, int(dataset.sizes[doc]))))
        return np.concatenate(parts)

    def _fit(self, tokens: np.ndarray, pad: int) -> np.ndarray:
        """Truncate or pad (with ``pad``) to ``seq_length + 1`` tokens, as int64."""
        want = self.seq_length + 1
        out = np.full(want, pad, dtype=np.int64)
        n = min(len(tokens), want)
        out[:n] = tokens[:n]
        return out

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        idx = int(idx)
        if not 0 <= idx < self._len:
            # GPT-NeoX wraps out-of-range requests instead of failing mid-run.
            logger.warning("%s: sample %d out of range, wrapping to %d", self.name, idx,
                           idx % self._len)
            idx %= self._len
        sample = int(self.shuffle_idx[idx])
        text = self._tokens(self.indexed_dataset, sample)
        if self.label_dataset is None:
            # -100 marks padding so get_batch masks it out of the loss.
            return {"text": self._fit(text, -100)}
        label = self._tokens(self.label_dataset, sample)
        return {"text": self._fit(text, 0), "label": self._fit(label, -100)}
