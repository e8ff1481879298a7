"""``build_model``: the model for one rank, plain or pipelined, plus its loss function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from megatron.model.errors import ModelSpecError
from megatron.model.fused_loss import make_fused_loss_fn
from megatron.model.gpt import GPTModel, make_loss_fn
from megatron.model.pipe import build_pipeline
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import ProcessGroups
from megatron.parallel.random import RNGTracker


def build_model(spec: ModelSpec, groups: ProcessGroups, *, pipe_parallel_size: int,
                partition_method: str = "type:transformer",
                activation_checkpointing: bool = False, checkpoint_num_layers: int = 1,
                seed: int = 1234, rng_tracker: RNGTracker | None = None,
                fused_loss: bool = False, fused_loss_chunk_tokens: int | None = None,
                ) -> tuple[nn.Module, Callable[[Any, Any], Any]]:
    """Build this rank's model and ``loss_fn(logits, (labels, loss_mask))``.

    Args:
        spec: the architecture.
        groups: this process's groups (``ProcessGroups.single()`` for one process).
        pipe_parallel_size: 0 gives a plain ``GPTModel`` (keys ``sequential.<i>.<param>``);
            >= 1 gives a DeepSpeed ``PipelineModule`` (needs torch.distributed).
        partition_method: how the pipeline splits layers over stages.
        activation_checkpointing: recompute activations in backward.
        checkpoint_num_layers: blocks per checkpointed chunk.
        seed: run seed; weights depend only on it and parameter names, not on the layout.
        rng_tracker: optional tensor-parallel RNG streams (``RNGTracker.from_seed``); with
            it, attention dropout differs across tensor-parallel ranks as in Megatron, and
            activation checkpointing replays it exactly.
        fused_loss: fuse the output projection with the cross entropy, chunked over tokens,
            so full logits are never materialised in training (``fused_loss.py``). The
            module then returns the head input in training mode and logits in eval mode;
            use the returned loss_fn for both. Only for ``pipe_parallel_size == 0`` (the
            pipeline keeps the plain head) and not under ZeRO-3, whose partitioned head
            weight is only gathered inside the module's forward.
        fused_loss_chunk_tokens: tokens per chunk of the fused loss; None: the device's
            default (``fused_loss.default_chunk_tokens``).

    Raises:
        ModelSpecError: for options this model does not support.
    """
    if spec.sequence_parallel and spec.seq_length % groups.tp.size != 0:
        raise ModelSpecError(f"sequence_parallel needs seq_length = {spec.seq_length} to be "
                             f"divisible by model_parallel_size = {groups.tp.size}")
    loss_fn = make_loss_fn(groups.tp)
    if pipe_parallel_size == 0:
        model = GPTModel(spec, groups.tp, seed=seed,
                         activation_checkpointing=activation_checkpointing,
                         checkpoint_num_layers=checkpoint_num_layers,
                         rng_tracker=rng_tracker, fused_loss=fused_loss)
        if fused_loss:
            loss_fn = make_fused_loss_fn(model, groups.tp, loss_fn, fused_loss_chunk_tokens)
        return model, loss_fn
    module = build_pipeline(spec, groups, loss_fn, partition_method=partition_method,
                            activation_checkpointing=activation_checkpointing,
                            checkpoint_num_layers=checkpoint_num_layers, seed=seed,
                            rng_tracker=rng_tracker)
    return module, loss_fn
