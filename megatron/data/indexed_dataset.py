"""The Megatron/GPT-NeoX ``mmap`` indexed dataset: a ``.bin`` of tokens plus an ``.idx`` index.

Layout of ``{prefix}.idx`` (little endian), byte for byte as GPT-NeoX writes it::

    b"MMIDIDX\\x00\\x00"   magic (9 bytes)
    u64 version          always 1
    u8  dtype code       1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16
    u64 N                number of items ("sentences")
    u64 D                length of doc_idx (number of documents + 1)
    int32 sizes[N]       tokens per item
    int64 pointers[N]    byte offset of each item in the .bin
    int64 doc_idx[D]     item index where each document starts; doc_idx[0] == 0

``{prefix}.bin`` is the items' tokens back to back in that dtype. The reader memory-maps both
files, so opening a 100 GB corpus costs only the page tables, and ``get`` returns views.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np

from megatron.data.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N, D: 34 bytes

DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    8: np.uint16,
}
# GPT-NeoX also lists float codes; token files never hold floats, so we refuse them by name.
_FLOAT_CODES = {6: "float32/float64", 7: "float64"}


def code_for_dtype(dtype: Any) -> int:
    """Return the index dtype code for a numpy dtype, or raise DataError for unsupported ones."""
    want = np.dtype(dtype)
    for code, candidate in DTYPE_CODES.items():
        if np.dtype(candidate) == want:
            return code
    raise DataError(
        f"dtype {want} cannot be stored in an indexed dataset; "
        f"expected one of {sorted(np.dtype(d).name for d in DTYPE_CODES.values())}"
    )


def best_fitting_dtype(vocab_size: int | None) -> type[np.generic]:
    """Smallest token dtype GPT-NeoX picks: uint16 below 65500 tokens, else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.uint16
    return np.int32


def data_file_path(prefix: str | os.PathLike[str]) -> str:
    """``{prefix}.bin``."""
    return f"{prefix}.bin"


def index_file_path(prefix: str | os.PathLike[str]) -> str:
    """``{prefix}.idx``."""
    return f"{prefix}.idx"


def _map(path: str) -> np.ndarray:
    """Memory-map a file read-only; an empty file becomes an empty buffer (mmap refuses it)."""
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", order="C")


class _Index:
    """The parsed ``.idx`` file: dtype, sizes, pointers and doc_idx as memory-mapped views."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise DataError(f"index file {path} does not exist; expected the .idx of a dataset")
        self.path = path
        self._buffer = _map(path)
        if len(self._buffer) < _HEADER.size:
            raise DataError(f"{path}: {len(self._buffer)} bytes is too short for an index header")
        magic, version, code, n, d = _HEADER.unpack(self._buffer[: _HEADER.size].tobytes())
        if magic != MAGIC:
            raise DataError(
                f"{path}: bad magic {magic!r}; expected {MAGIC!r} (a GPT-NeoX mmap .idx). "
                "Re-create the file with tools/preprocess_data.py"
            )
        if version != VERSION:
            raise DataError(f"{path}: index version {version} is unknown; expected {VERSION}")
        if code in _FLOAT_CODES:
            raise DataError(
                f"{path}: dtype code {code} ({_FLOAT_CODES[code]}) is a float type; token "
                f"datasets need an integer dtype code in {sorted(DTYPE_CODES)}"
            )
        if code not in DTYPE_CODES:
            raise DataError(f"{path}: dtype code {code} is unknown; expected {sorted(DTYPE_CODES)}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected = _HEADER.size + n * 4 + n * 8 + d * 8
        if len(self._buffer) != expected:
            raise DataError(
                f"{path}: {len(self._buffer)} bytes, but a header with {n} items and "
                f"{d} doc_idx entries needs {expected}; the file is truncated or corrupt"
            )
        offset = _HEADER.size
        self.sizes = np.frombuffer(self._buffer, dtype=np.int32, count=n, offset=offset)
        offset += n * 4
        self.pointers = np.frombuffer(self._buffer, dtype=np.int64, count=n, offset=offset)
        offset += n * 8
        self.doc_idx = np.frombuffer(self._buffer, dtype=np.int64, count=d, offset=offset)

    def data_bytes(self) -> int:
        """Size the ``.bin`` must have for this index."""
        if len(self.sizes) == 0:
            return 0
        return int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize


class MMapIndexedDataset:
    """Read-only view of ``{prefix}.bin`` / ``{prefix}.idx`` (GPT-NeoX's ``mmap`` data_impl).

    Args:
        prefix: path without the ``.bin``/``.idx`` suffix.
        skip_warmup: when False, read both files once so the page cache is warm (GPT-NeoX's
            ``mmap_warmup``); the default leaves paging to the OS.
    """

    def __init__(self, prefix: str | os.PathLike[str], skip_warmup: bool = True) -> None:
        self.prefix = str(prefix)
        self._index = _Index(index_file_path(self.prefix))
        bin_path = data_file_path(self.prefix)
        if not os.path.isfile(bin_path):
            raise DataError(f"data file {bin_path} does not exist (its index does)")
        actual, expected = os.path.getsize(bin_path), self._index.data_bytes()
        if actual != expected:
            raise DataError(
                f"{bin_path}: {actual} bytes, but {index_file_path(self.prefix)} describes "
                f"{expected} bytes; the .bin and .idx do not belong together or one is truncated"
            )
        self._bin = _map(bin_path)
        if not skip_warmup:
            _warmup(bin_path)

    @staticmethod
    def exists(prefix: str | os.PathLike[str]) -> bool:
        """True when both ``.bin`` and ``.idx`` exist for ``prefix``."""
        return os.path.isfile(index_file_path(prefix)) and os.path.isfile(data_file_path(prefix))

    @property
    def dtype(self) -> np.dtype:
        """Token dtype stored in the ``.bin``."""
        return self._index.dtype

    @property
    def sizes(self) -> np.ndarray:
        """int32 tokens per item, shape [N]."""
        return self._index.sizes

    @property
    def pointers(self) -> np.ndarray:
        """int64 byte offset of each item in the ``.bin``, shape [N]."""
        return self._index.pointers

    @property
    def doc_idx(self) -> np.ndarray:
        """int64 item index where each document starts, shape [num_documents + 1]."""
        return self._index.doc_idx

    def __len__(self) -> int:
        return len(self._index.sizes)

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of item ``idx`` as a view (no copy).

        Raises:
            IndexError: ``idx`` is not an item, or the range leaves the item.
        """
        idx = int(idx)
        if not 0 <= idx < len(self):
            raise IndexError(f"item {idx} out of range for {self.prefix} ({len(self)} items)")
        size = int(self._index.sizes[idx])
        length = size - offset if length is None else int(length)
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"range [{offset}, {offset + length}) leaves item {idx} of {size} tokens"
            )
        start = int(self._index.pointers[idx]) + int(offset) * self.dtype.itemsize
        return np.frombuffer(self._bin, dtype=self.dtype, count=length, offset=start)

    def __getitem__(self, idx: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(idx, slice):
            return [self.get(i) for i in range(*idx.indices(len(self)))]
        idx = int(idx)
        return self.get(idx + len(self) if idx < 0 else idx)


def _warmup(path: str, chunk: int = 100 * 1024 * 1024) -> None:
    """Read a file once, front to back, to pull it into the page cache."""
    with open(path, "rb") as f:
        while f.read(chunk):
            pass


class MMapIndexedDatasetBuilder:
    """Writes a ``.bin``/``.idx`` pair; nothing appears under the final names until finalize.

    Tokens stream to ``{bin_path}.tmp-<pid>``; ``finalize`` writes the index the same way, then
    renames the ``.bin`` and last the ``.idx``, so an existing ``.idx`` always means a complete
    dataset (readers and concurrent writers never see half a file).
    """

    def __init__(self, bin_path: str | os.PathLike[str], dtype: Any = np.int32) -> None:
        self.bin_path = str(bin_path)
        self.dtype = np.dtype(dtype)
        self._code = code_for_dtype(self.dtype)
        self._tmp_bin = f"{self.bin_path}.tmp-{os.getpid()}"
        self._file = open(self._tmp_bin, "wb")  # closed in finalize() or abort()
        self._sizes: list[np.ndarray] = []
        self._doc_idx: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self._num_items = 0

    def add_item(self, tokens: Any) -> None:
        """Append one item (a sentence or a whole document) of token ids."""
        array = np.asarray(tokens).astype(self.dtype, copy=False).reshape(-1)
        self._file.write(array.tobytes(order="C"))
        self._sizes.append(np.array([array.size], dtype=np.int32))
        self._num_items += 1

    def end_document(self) -> None:
        """Close the current document: the items added since the last call form one document."""
        self._doc_idx.append(np.array([self._num_items], dtype=np.int64))

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many one-item documents at once (the fast path of preprocess_data).

        Args:
            tokens: all documents' tokens back to back.
            lengths: tokens per document; a zero-length document gets no item, as in GPT-NeoX.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != len(tokens):
            raise DataError(f"lengths sum to {int(lengths.sum())}, tokens hold {len(tokens)}")
        self._file.write(np.asarray(tokens).astype(self.dtype, copy=False).tobytes(order="C"))
        nonempty = lengths > 0
        self._sizes.append(lengths[nonempty].astype(np.int32))
        self._doc_idx.append(self._num_items + np.cumsum(nonempty, dtype=np.int64))
        self._num_items += int(nonempty.sum())

    def merge_file_(self, prefix: str | os.PathLike[str]) -> None:
        """Append every item and document of the dataset at ``prefix`` (same dtype required)."""
        other = MMapIndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise DataError(
                f"cannot merge {prefix}: its dtype is {other.dtype}, this builder writes "
                f"{self.dtype}; convert one of them first"
            )
        self._sizes.append(np.array(other.sizes, dtype=np.int32))
        self._doc_idx.append(np.array(other.doc_idx[1:], dtype=np.int64) + self._num_items)
        self._num_items += len(other)
        with open(data_file_path(prefix), "rb") as f:
            shutil.copyfileobj(f, self._file, 16 * 1024 * 1024)

    def finalize(self, idx_path: str | os.PathLike[str]) -> None:
        """Write the index and move both files to their final names."""
        self._file.close()
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int32)
        doc_idx = np.concatenate(self._doc_idx)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        tmp_idx = f"{idx_path}.tmp-{os.getpid()}"
        with open(tmp_idx, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, self._code, len(sizes), len(doc_idx)))
            f.write(sizes.astype("<i4").tobytes(order="C"))
            f.write(pointers.astype("<i8").tobytes(order="C"))
            f.write(doc_idx.astype("<i8").tobytes(order="C"))
        os.replace(self._tmp_bin, self.bin_path)
        os.replace(tmp_idx, idx_path)

    def abort(self) -> None:
        """Close and delete the partial output (after an error)."""
        self._file.close()
        Path(self._tmp_bin).unlink(missing_ok=True)


def make_builder(bin_path: str, vocab_size: int | None = None) -> MMapIndexedDatasetBuilder:
    """A builder with GPT-NeoX's dtype choice for ``vocab_size``."""
    return MMapIndexedDatasetBuilder(bin_path, dtype=best_fitting_dtype(vocab_size))
