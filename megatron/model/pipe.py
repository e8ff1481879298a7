"""The only DeepSpeed pipeline adapter: the ordered layer list -> ``PipelineModule``.

The embedding is a ``TiedLayerSpec`` keyed ``"embed"`` on the first stage and, with tied
weights, again on the last stage where its ``logits`` produce the output. Layer 0 has no
``forward_fn`` so DeepSpeed saves it as ``layer_00-*``; the tied head does (DeepSpeed then
skips it when saving, as in GPT-NeoX). The parameter-free slots (1 and L+2) are plain
functions, so they never appear on disk either.

Tuple plumbing lives here: the pipeline feeds ``(tokens, position_ids)`` to layer 0; every
other layer takes and returns one ``[b, s, h]`` tensor, so blocks never see tuples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from megatron.model.gpt import EmbeddingLayer, LayerEntry, layer_entries
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import ProcessGroups
from megatron.parallel.random import RNGTracker

PARTITION_METHODS = ("parameters", "uniform", "type:transformer", "type:<regex>")
# Layers DeepSpeed may recompute (matched on class name; "function" is ``pass_through``).
# The embedding (integer ids in, no gradient to replay) is never recomputed.
CHECKPOINTABLE = ["TransformerLayer", "FinalNorm", "OutputLayer", "function"]


class PipeEmbedding(EmbeddingLayer):
    """``EmbeddingLayer`` taking the pipeline's ``(tokens, position_ids)`` tuple.

    Same parameters and names as ``EmbeddingLayer``; only the call convention differs.
    """

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        tokens, position_ids = inputs
        return super().forward(tokens, position_ids)


def pass_through(x: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX's parameter-free slots (layers 1 and L+2)."""
    return x


def _tied_logits(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return module.logits(hidden)


def _layer_spec(entry: LayerEntry, spec: ModelSpec, groups: ProcessGroups, seed: int,
                rng: RNGTracker | None) -> Any:
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if entry.role == "pass":
        return pass_through
    if entry.role in ("embed", "tied_head"):
        # Both ends build the same layer 0 (same seeds), so the tied copies start equal.
        fn = _tied_logits if entry.role == "tied_head" else None
        return TiedLayerSpec("embed", PipeEmbedding, spec, groups.tp, 0, seed, forward_fn=fn,
                             tied_weight_attr="word_embeddings.weight")
    extra = (rng,) if entry.role == "block" else ()
    return LayerSpec(entry.cls, spec, groups.tp, entry.index, seed, *extra)


def build_pipeline(spec: ModelSpec, groups: ProcessGroups, loss_fn: Callable[..., Any], *,
                   partition_method: str = "type:transformer",
                   activation_checkpointing: bool = False, checkpoint_num_layers: int = 1,
                   seed: int = 1234, rng_tracker: RNGTracker | None = None) -> nn.Module:
    """A DeepSpeed ``PipelineModule`` over ``groups.topology`` with ``loss_fn`` attached.

    Args:
        partition_method: DeepSpeed's ``parameters``, ``uniform`` or ``type:<regex>`` over
            layer class names (``type:transformer`` balances blocks).
        activation_checkpointing: recompute every ``checkpoint_num_layers`` layers.
        rng_tracker: tensor-parallel RNG streams; when given, attention dropout forks them
            and recomputation replays them (``RNGTracker.checkpoint``).
    """
    from deepspeed.pipe import PipelineModule

    specs = [_layer_spec(e, spec, groups, seed, rng_tracker) for e in layer_entries(spec)]
    interval = checkpoint_num_layers if activation_checkpointing else 0
    extra = {} if rng_tracker is None else {"activation_checkpoint_func": rng_tracker.checkpoint}
    return PipelineModule(layers=specs, loss_fn=loss_fn, topology=groups.topology,
                          partition_method=partition_method,
                          activation_checkpoint_interval=interval,
                          checkpointable_layers=CHECKPOINTABLE, **extra)
