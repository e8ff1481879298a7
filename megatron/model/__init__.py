"""The GPT model: spec, layers, initialisation, pipeline adapter and FLOP counts.

Layout convention: activations are ``[b, s, h]`` (batch, sequence, hidden) everywhere;
attention heads are ``[b, heads, s, head_dim]`` inside kernels; logits are ``[b, s, V/tp]``
(this tensor-parallel rank's block of the padded vocabulary).

Public API::

    spec = ModelSpec.from_args(args, padded_vocab_size=...)
    model, loss_fn = build_model(spec, groups, pipe_parallel_size=0)
    logits = model((tokens, position_ids))
    loss = loss_fn(logits, (labels, loss_mask))

Exporting or merging tensor-parallel shards: ``shard_layout(spec, name)`` gives each
parameter's split dimension and sections; ``join_shards`` rebuilds the full tensor. With
sequence parallelism the model sums the gradients of replicated parameters itself, so the
training step must not call ``all_reduce_sequence_parallel_grads`` on them.

Incremental decoding (``kv_cache.py``): a ``KVCache`` keeps each block's keys (after rotary)
and values for this rank's ``num_kv_heads / tp`` heads, so each generated token runs one
position instead of the whole sequence; the results equal the full forward's::

    cache = KVCache.allocate(model, batch_size, max_length)   # model: a plain GPTModel
    logits = model((prompt, position_ids), cache=cache)       # [b, s, V/tp]
    logits = model((next_token[:, None], cache.next_position_ids()), cache=cache)  # [b, 1, .]

Prompts of different lengths are left-padded (``left_padded_batch``): a negative position id
marks a padding slot that attention ignores. ``cache.length``, ``rewind(n)`` and ``reset()``
manage the filled slots.
"""

from megatron.model.builder import build_model
from megatron.model.errors import ModelSpecError
from megatron.model.flops import flops_per_iteration, num_parameters
from megatron.model.gpt import GPTModel, layer_entries
from megatron.model.init import gather_full_parameter, join_shards
from megatron.model.kv_cache import KVCache, KVCacheError, left_padded_batch
from megatron.model.sharding import shard_layout
from megatron.model.spec import ModelSpec

__all__ = ["GPTModel", "KVCache", "KVCacheError", "ModelSpec", "ModelSpecError", "build_model",
           "flops_per_iteration", "gather_full_parameter", "join_shards", "layer_entries",
           "left_padded_batch", "num_parameters", "shard_layout"]
