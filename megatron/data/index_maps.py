"""GPT2Dataset's three index maps (doc_idx, sample_idx, shuffle_idx), built as GPT-NeoX does.

GPT-NeoX builds ``sample_idx`` with a C++ helper that walks the token stream one document at a
time. Here the same result comes from numpy: sample ``i`` starts at global token position
``i * seq_length`` of the stream of documents in ``doc_idx`` order, so a ``searchsorted`` over
the documents' start positions finds every sample at once. The random draws (one
``numpy.random.RandomState(seed)``: doc_idx shuffle first, then shuffle_idx) are GPT-NeoX's,
so the maps are identical to the ones GPT-NeoX caches on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from megatron.data.errors import DataError

PACK_IMPLS = ("packed", "pack_until_overflow", "unpacked")
IndexMaps = tuple[np.ndarray, np.ndarray, np.ndarray]


class LabelSource(Protocol):
    """What the index builders need from a label dataset: one document's labels."""

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray: ...


def num_epochs_for(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Smallest number of epochs whose tokens give ``num_samples`` samples.

    A sample takes ``seq_length + 1`` tokens but shares its last token with the next sample, so
    ``E`` epochs give ``(E * tokens_per_epoch - 1) // seq_length`` samples.
    """
    if tokens_per_epoch <= 0:
        raise DataError("the selected documents hold no tokens; cannot build training samples")
    needed = num_samples * seq_length + 1  # E * tokens - 1 >= num_samples * seq_length
    return max(1, -(-needed // tokens_per_epoch))


def build_doc_idx(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState) -> np.ndarray:
    """All documents repeated ``num_epochs`` times, shuffled once as a whole (int32)."""
    doc_idx = np.tile(np.asarray(documents, dtype=np.int64), num_epochs).astype(np.int32)
    rng.shuffle(doc_idx)
    return doc_idx


def build_sample_idx(
    sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_epochs: int, tokens_per_epoch: int
) -> np.ndarray:
    """``[num_samples + 1, 2]`` rows of (position in doc_idx, token offset) where samples start.

    Row ``i`` locates global token ``i * seq_length``; sample ``i`` spans rows ``i`` to ``i+1``
    inclusive of the end token. int32 when it fits (as GPT-NeoX), else int64.
    """
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    doc_sizes = np.asarray(sizes)[doc_idx].astype(np.int64)
    starts = np.zeros(len(doc_sizes), dtype=np.int64)
    np.cumsum(doc_sizes[:-1], out=starts[1:])
    positions = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    # The last document starting at or before each position holds it; empty documents share
    # their start with the next one, and "right" skips past them as GPT-NeoX's walk does.
    where = np.searchsorted(starts, positions, side="right") - 1
    dtype = np.int32 if 2 * (num_samples + 1) < np.iinfo(np.int32).max else np.int64
    sample_idx = np.empty((num_samples + 1, 2), dtype=dtype)
    sample_idx[:, 0] = where
    sample_idx[:, 1] = positions - starts[where]
    sample_idx[0] = (0, 0)  # GPT-NeoX always starts at the first entry, even an empty one
    return sample_idx


def build_shuffle_idx(size: int, rng: np.random.RandomState) -> np.ndarray:
    """A shuffled ``arange(size)``: uint32, or int64 when uint32 is too small."""
    dtype = np.uint32 if size < np.iinfo(np.uint32).max - 1 else np.int64
    shuffle_idx = np.arange(size, dtype=dtype)
    rng.shuffle(shuffle_idx)
    return shuffle_idx


def _packed(ctx: _Context) -> IndexMaps:
    tokens_per_epoch = int(np.sum(ctx.sizes[ctx.documents], dtype=np.int64))
    num_epochs = num_epochs_for(tokens_per_epoch, ctx.seq_length, ctx.num_samples)
    doc_idx = build_doc_idx(ctx.documents, num_epochs, ctx.rng)
    sample_idx = build_sample_idx(ctx.sizes, doc_idx, ctx.seq_length, num_epochs, tokens_per_epoch)
    # -1: sample i is the range [sample_idx[i], sample_idx[i + 1]].
    shuffle_idx = build_shuffle_idx(sample_idx.shape[0] - 1, ctx.rng)
    return doc_idx, sample_idx, shuffle_idx


class _Context:
    """Inputs shared by the packing strategies."""

    def __init__(
        self,
        documents: np.ndarray,
        sizes: np.ndarray,
        num_samples: int,
        seq_length: int,
        seed: int,
        allow_chopped: bool,
        labels: LabelSource | None,
    ) -> None:
        self.documents = np.asarray(documents)
        self.sizes = np.asarray(sizes)
        self.num_samples = num_samples
        self.seq_length = seq_length
        self.rng = np.random.RandomState(seed=seed)
        self.allow_chopped = allow_chopped
        self.labels = labels

    def usable(self, doc: int, label_window: int | None = None) -> bool:
        """GPT-NeoX's per-document filter: too long when chopping is off, or all labels -100.

        GPT-NeoX looks at ``seq_length + 1`` labels when packing and ``seq_length`` when not.
        """
        if not self.allow_chopped and self.sizes[doc] > self.seq_length + 1:
            return False
        if self.labels is not None:
            window = self.seq_length + 1 if label_window is None else label_window
            return not np.all(self.labels.get(doc)[:window] == -100)
        return True

    def check_any_usable(self) -> None:
        """Refuse to loop forever when the filter rejects every document."""
        if not any(self.usable(int(d)) for d in self.documents):
            raise DataError(
                f"no document fits: with allow_chopped={self.allow_chopped} and "
                f"seq_length={self.seq_length}, every selected document is too long or fully "
                "masked; set allow_chopped: true or use a longer seq_length"
            )


def _pack_until_overflow(ctx: _Context) -> IndexMaps:
    """Whole documents packed greedily into samples; one that overflows starts a new sample."""
    ctx.check_any_usable()
    shuffle_idx = np.arange(ctx.num_samples)
    ctx.rng.shuffle(shuffle_idx)
    order = np.arange(len(ctx.documents))
    ctx.rng.shuffle(order)
    sample_idx: list[tuple[int, int]] = []
    doc_idx: list[int] = []
    running, cursor = 0, 0
    while len(sample_idx) < ctx.num_samples:
        doc = int(ctx.documents[order[cursor]])
        if ctx.usable(doc):
            length = int(ctx.sizes[doc])
            if running == 0 or running + length > ctx.seq_length + 1:
                sample_idx.append((len(doc_idx), 0))
                running = length
            else:
                running += length
            doc_idx.append(doc)
        cursor += 1
        if cursor == len(ctx.documents):
            cursor = 0
            ctx.rng.shuffle(order)
    sample_idx.append((len(doc_idx), 0))
    return np.array(doc_idx, dtype=np.int64), np.array(sample_idx, dtype=np.int64), shuffle_idx


def _unpacked(ctx: _Context) -> IndexMaps:
    """One document per sample, in document order, cycling; samples are padded, not packed."""
    ctx.check_any_usable()
    shuffle_idx = np.arange(ctx.num_samples)
    ctx.rng.shuffle(shuffle_idx)
    sample_idx = np.zeros((ctx.num_samples + 1, 2), dtype=np.int64)
    sample_idx[:, 0] = np.arange(ctx.num_samples + 1)
    doc_idx: list[int] = []
    cursor = 0
    while len(doc_idx) <= ctx.num_samples:
        doc = int(ctx.documents[cursor])
        if ctx.usable(doc, label_window=ctx.seq_length):
            doc_idx.append(doc)
        cursor = (cursor + 1) % len(ctx.documents)
    return np.array(doc_idx, dtype=np.int64), sample_idx, shuffle_idx


_BUILDERS: dict[str, Callable[[_Context], IndexMaps]] = {
    "packed": _packed,
    "pack_until_overflow": _pack_until_overflow,
    "unpacked": _unpacked,
}


def build_index_maps(
    documents: np.ndarray,
    sizes: np.ndarray,
    num_samples: int,
    seq_length: int,
    seed: int,
    pack_impl: str = "packed",
    allow_chopped: bool = True,
    labels: LabelSource | None = None,
) -> IndexMaps:
    """Build (doc_idx, sample_idx, shuffle_idx) for ``pack_impl`` exactly as GPT-NeoX would.

    Unlike GPT-NeoX, ``pack_until_overflow`` and ``unpacked`` draw from ``documents`` (the
    split's documents) rather than from the first ``len(documents)`` documents of the file;
    the two agree whenever ``documents`` is ``0..n-1``.
    """
    builder = _BUILDERS.get(pack_impl)
    if builder is None:
        raise DataError(f"pack_impl {pack_impl!r} is unknown; expected one of {list(_BUILDERS)}")
    if seq_length < 1:
        raise DataError(f"seq_length must be at least 1, got {seq_length}")
    if len(documents) == 0:
        raise DataError("no documents selected; check the split and data paths")
    ctx = _Context(documents, sizes, num_samples, seq_length, seed, allow_chopped, labels)
    return builder(ctx)
