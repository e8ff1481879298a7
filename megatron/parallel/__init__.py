"""Tensor, pipeline and data parallelism: layout arithmetic, process groups and TP layers.

Public API (import from ``megatron.parallel``):

- ``ParallelLayout(tp, pp, dp, rank)``, ``ParallelLayout.from_world(world_size, tp, pp, rank)``:
  pure rank arithmetic in DeepSpeed's ``PipeModelDataParallelTopology`` order
  (``layout.py``).
- ``ProcessGroups.build(layout)`` / ``ProcessGroups.single()`` with ``.tp``, ``.dp``, ``.pp``,
  ``.model`` (each a ``Group``: ``size``, ``rank``, ``ranks``, ``group``), ``.topology`` and
  ``.mpu`` for DeepSpeed (``groups.py``; its docstring says how to hand them to DeepSpeed);
  ``collective_device()``: where a tensor for a collective on the default group must live.
- Autograd collectives: ``copy_to_tp``, ``reduce_from_tp``, ``scatter_to_tp``,
  ``gather_from_tp``, ``scatter_to_sequence_parallel``, ``gather_from_sequence_parallel``,
  ``reduce_scatter_to_sequence_parallel``, ``all_reduce_sequence_parallel_grads``,
  ``register_sequence_parallel_grad_hooks`` (``mappings.py``).
- Layers: ``ColumnParallelLinear``, ``RowParallelLinear``, ``VocabParallelEmbedding``, and the
  sharding helpers ``shard``, ``gather_full``, ``set_tp_attributes`` (``layers.py``).
- ``vocab_parallel_cross_entropy(logits, labels, tp)`` (``cross_entropy.py``).
- ``RNGTracker`` with ``fork()``, ``get_states``/``set_states`` and ``checkpoint``
  (``random.py``).
- ``LayoutError``, raised for impossible layouts and shapes (``errors.py``).

With ``tp.size == 1`` nothing communicates, so all of it works without ``torch.distributed``.
"""

from megatron.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron.parallel.errors import LayoutError
from megatron.parallel.groups import (
    DeepSpeedMPU,
    Group,
    ProcessGroups,
    TPGroup,
    collective_device,
)
from megatron.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    default_init,
    gather_full,
    set_tp_attributes,
    shard,
)
from megatron.parallel.layout import ParallelLayout
from megatron.parallel.mappings import (
    all_reduce_sequence_parallel_grads,
    copy_to_tp,
    gather_from_sequence_parallel,
    gather_from_tp,
    reduce_from_tp,
    reduce_scatter_to_sequence_parallel,
    register_sequence_parallel_grad_hooks,
    scatter_to_sequence_parallel,
    scatter_to_tp,
)
from megatron.parallel.random import MODEL_PARALLEL_RNG, RNGTracker

__all__ = [
    "MODEL_PARALLEL_RNG",
    "ColumnParallelLinear",
    "DeepSpeedMPU",
    "Group",
    "LayoutError",
    "ParallelLayout",
    "ProcessGroups",
    "RNGTracker",
    "RowParallelLinear",
    "TPGroup",
    "VocabParallelEmbedding",
    "all_reduce_sequence_parallel_grads",
    "collective_device",
    "copy_to_tp",
    "default_init",
    "gather_from_sequence_parallel",
    "gather_from_tp",
    "gather_full",
    "reduce_from_tp",
    "reduce_scatter_to_sequence_parallel",
    "register_sequence_parallel_grad_hooks",
    "scatter_to_sequence_parallel",
    "scatter_to_tp",
    "set_tp_attributes",
    "shard",
    "vocab_parallel_cross_entropy",
]
