"""Build the train/valid/test datasets from GPT-NeoX data options.

Two modes, as in GPT-NeoX:

* ``data_path`` + ``split`` ("969,30,1"): one corpus cut into contiguous document ranges.
* ``train_data_paths`` / ``valid_data_paths`` / ``test_data_paths`` with optional weights: one
  GPT2Dataset per path, blended by weight (or by document count with
  ``weight_by_num_documents``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from megatron.data.blendable_dataset import BlendableDataset
from megatron.data.errors import DataError
from megatron.data.gpt2_dataset import GPT2Dataset
from megatron.data.indexed_dataset import MMapIndexedDataset

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The data options, named as GPT-NeoX names them (see ``from_args``)."""

    data_path: str | None = None
    split: str = "969, 30, 1"
    train_data_paths: tuple[str, ...] | None = None
    valid_data_paths: tuple[str, ...] | None = None
    test_data_paths: tuple[str, ...] | None = None
    train_data_weights: tuple[float, ...] | None = None
    valid_data_weights: tuple[float, ...] | None = None
    test_data_weights: tuple[float, ...] | None = None
    label_data_paths: tuple[str, ...] | None = None
    train_label_data_paths: tuple[str, ...] | None = None
    valid_label_data_paths: tuple[str, ...] | None = None
    test_label_data_paths: tuple[str, ...] | None = None
    weight_by_num_documents: bool = False
    weighted_sampler_alpha: float = 1.0
    weighted_document_limit: int | None = None
    pack_impl: str = "packed"
    allow_chopped: bool = True
    mmap_warmup: bool = False
    data_impl: str = "mmap"

    @classmethod
    def from_args(cls, args: Any) -> DataConfig:
        """Read every field from the attribute of the same name on ``args`` (duck-typed).

        Missing attributes keep their defaults; lists become tuples.
        """
        values: dict[str, Any] = {}
        for field in fields(cls):
            if hasattr(args, field.name):
                value = getattr(args, field.name)
                if isinstance(value, list):
                    value = tuple(value)
                values[field.name] = value
        if isinstance(values.get("data_path"), tuple):  # some configs give a one-item list
            paths = values["data_path"]
            if len(paths) != 1:
                raise DataError(f"data_path {list(paths)} must be one path; use train_data_paths")
            values["data_path"] = paths[0]
        if values.get("weighted_sampler_alpha") is None:
            values.pop("weighted_sampler_alpha", None)
        return cls(**values)


def num_samples_for(
    train_iters: int, eval_interval: int, eval_iters: int, train_batch_size: int
) -> tuple[int, int, int]:
    """Samples needed per split: train, every evaluation plus the final one, and the test."""
    if eval_interval <= 0:
        raise DataError(f"eval_interval must be positive, got {eval_interval}")
    train = train_iters * train_batch_size
    valid = (train_iters // eval_interval + 1) * eval_iters * train_batch_size
    test = eval_iters * train_batch_size
    return train, valid, test


def split_boundaries(split: str, size: int) -> list[int]:
    """Document boundaries ``[0, a, b, size]`` for a split string like "969, 30, 1" or "98/2".

    Fractions are normalised; each boundary is rounded and the rounding error is taken off
    every boundary after the first, as GPT-NeoX does.
    """
    sep = "," if "," in split else "/"
    try:
        parts = [float(s) for s in split.split(sep)]
    except ValueError as exc:
        raise DataError(f"split {split!r} must be numbers separated by ',' or '/'") from exc
    parts = (parts + [0.0, 0.0])[:3]
    total = sum(parts)
    if total <= 0 or any(p < 0 for p in parts):
        raise DataError(f"split {split!r} needs non-negative parts with a positive sum")
    bounds = [0]
    for part in parts:
        bounds.append(bounds[-1] + int(round(part / total * float(size))))
    diff = bounds[-1] - size
    return [bounds[0]] + [b - diff for b in bounds[1:]]


def weights_by_num_docs(counts: Sequence[int], alpha: float = 1.0,
                        limit: int | None = None) -> list[float]:
    """GPT-NeoX's document-count weights: ``p ∝ (n/N)^alpha``, then times ``1 - n/N``, normalised.

    ``alpha < 1`` up-samples small sources; ``limit`` caps each count first.
    """
    if limit:
        counts = [min(c, limit) for c in counts]
    total = sum(counts)
    if total <= 0:
        raise DataError("weight_by_num_documents: the datasets hold no documents")
    unbiased = [c / total for c in counts]
    probs = [p**alpha for p in unbiased]
    probs = [p / sum(probs) for p in probs]
    weights = [p * (1 - u) for p, u in zip(probs, unbiased, strict=True)]
    norm = sum(weights)
    if norm <= 0:  # a single source: 1 - n/N is 0, so fall back to its plain share
        return [1.0 / len(counts)] * len(counts)
    return [w / norm for w in weights]


def normalized_weights_and_num_samples(
    weights: Sequence[float], num_samples: int
) -> tuple[list[float], list[int]]:
    """Normalise weights; ask each dataset for 0.5% more than its share, as GPT-NeoX does."""
    total = sum(weights)
    if total <= 0:
        raise DataError(f"data weights {list(weights)} must have a positive sum")
    normed = [w / total for w in weights]
    return normed, [int(math.ceil(num_samples * w * 1.005)) for w in normed]


def _open(prefix: str, cfg: DataConfig) -> MMapIndexedDataset:
    if cfg.data_impl not in ("mmap", "infer"):
        raise DataError(f"data_impl {cfg.data_impl!r} is not supported; use 'mmap'")
    return MMapIndexedDataset(prefix, skip_warmup=not cfg.mmap_warmup)


def _dataset(cfg: DataConfig, prefix: str, name: str, documents: np.ndarray, num_samples: int,
             seq_length: int, seed: int, build: bool, label: str | None) -> GPT2Dataset:
    return GPT2Dataset(
        name, prefix, documents, _open(prefix, cfg), num_samples, seq_length, seed,
        pack_impl=cfg.pack_impl, allow_chopped=cfg.allow_chopped, build_index_mappings=build,
        label_dataset=_open(label, cfg) if label else None,
    )


def _split_datasets(cfg: DataConfig, num_samples: Sequence[int], seq_length: int, seed: int,
                    build: bool) -> list[GPT2Dataset | None]:
    """One corpus, contiguous document ranges per split (GPT-NeoX names train/valid/test)."""
    prefix = str(cfg.data_path)
    total = len(_open(prefix, cfg).sizes)
    bounds = split_boundaries(cfg.split, total)
    label = cfg.label_data_paths[0] if cfg.label_data_paths else None
    out: list[GPT2Dataset | None] = []
    for i, name in enumerate(SPLITS):
        if bounds[i + 1] <= bounds[i]:
            out.append(None)
            continue
        docs = np.arange(bounds[i], bounds[i + 1], dtype=np.int32)
        out.append(_dataset(cfg, prefix, name, docs, num_samples[i], seq_length, seed, build,
                            label))
    return out


def _blend(cfg: DataConfig, split: str, num_samples: int, seq_length: int, seed: int,
           build: bool) -> BlendableDataset | None:
    """One GPT2Dataset per path of this split, blended by weight."""
    paths = list(getattr(cfg, f"{split}_data_paths") or ())
    if not paths:
        return None
    weights = list(getattr(cfg, f"{split}_data_weights") or [1.0] * len(paths))
    labels = list(getattr(cfg, f"{split}_label_data_paths") or [None] * len(paths))
    if len(weights) != len(paths) or len(labels) != len(paths):
        raise DataError(f"{split}_data_paths has {len(paths)} entries but its weights have "
                        f"{len(weights)} and its label paths {len(labels)}")
    if cfg.weight_by_num_documents:
        counts = [len(_open(p, cfg).sizes) for p in paths]
        weights = weights_by_num_docs(counts, cfg.weighted_sampler_alpha,
                                      cfg.weighted_document_limit)
    weights, per_dataset = normalized_weights_and_num_samples(weights, num_samples)
    datasets = []
    for i, (path, label, n) in enumerate(zip(paths, labels, per_dataset, strict=True)):
        docs = np.arange(len(_open(path, cfg).sizes), dtype=np.int32)
        datasets.append(_dataset(cfg, path, f"{split}_{i}", docs, n, seq_length, seed, build,
                                 label))
    return BlendableDataset(datasets, weights)


def build_train_valid_test_datasets(
    cfg: DataConfig,
    num_samples: tuple[int, int, int],
    seq_length: int,
    seed: int,
    build_index_mappings: bool = True,
) -> tuple[Any, Any, Any]:
    """(train, valid, test) datasets; a split with no documents or paths is None.

    Args:
        cfg: data options.
        num_samples: samples per split, e.g. from :func:`num_samples_for`.
        seq_length: tokens per sample minus one.
        seed: shuffling seed.
        build_index_mappings: this process may build missing index caches (one rank is
            enough; the others wait for the files).
    """
    if cfg.train_data_paths:
        return tuple(  # type: ignore[return-value]
            _blend(cfg, split, n, seq_length, seed, build_index_mappings)
            for split, n in zip(SPLITS, num_samples, strict=True)
        )
    if cfg.data_path:
        return tuple(  # type: ignore[return-value]
            _split_datasets(cfg, num_samples, seq_length, seed, build_index_mappings)
        )
    raise DataError("no training data: set data_path (with split) or train_data_paths")
