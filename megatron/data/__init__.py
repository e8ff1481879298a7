"""Datasets: the Megatron ``.bin/.idx`` format, GPT2Dataset, blending, batching.

Names are imported lazily so that light users (``tools/preprocess_data.py`` only needs the
indexed-dataset writer) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "megatron.data.errors",
    "MMapIndexedDataset": "megatron.data.indexed_dataset",
    "MMapIndexedDatasetBuilder": "megatron.data.indexed_dataset",
    "best_fitting_dtype": "megatron.data.indexed_dataset",
    "GPT2Dataset": "megatron.data.gpt2_dataset",
    "BlendableDataset": "megatron.data.blendable_dataset",
    "DataConfig": "megatron.data.data_utils",
    "build_train_valid_test_datasets": "megatron.data.data_utils",
    "num_samples_for": "megatron.data.data_utils",
    "make_data_iterator": "megatron.data.iterator",
    "TimedIterator": "megatron.data.iterator",
    "get_batch": "megatron.data.batch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'megatron.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
