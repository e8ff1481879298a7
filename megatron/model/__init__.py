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
"""

from megatron.model.builder import build_model
from megatron.model.errors import ModelSpecError
from megatron.model.flops import flops_per_iteration, num_parameters
from megatron.model.gpt import GPTModel, layer_entries
from megatron.model.init import gather_full_parameter, join_shards
from megatron.model.sharding import shard_layout
from megatron.model.spec import ModelSpec

__all__ = ["GPTModel", "ModelSpec", "ModelSpecError", "build_model", "flops_per_iteration",
           "gather_full_parameter", "join_shards", "layer_entries", "num_parameters",
           "shard_layout"]
