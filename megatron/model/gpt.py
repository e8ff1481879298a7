"""The GPT model as an ordered layer list with GPT-NeoX layer indices.

``layer_entries`` is the single source of truth for layer order:

====================  =========================================================
index                 layer
====================  =========================================================
0                     ``EmbeddingLayer`` (word_embeddings, position_embeddings)
1                     ``PassThrough`` (parameter-free; GPT-NeoX's reshape slot)
2 .. L+1              transformer blocks
L+2                   ``PassThrough``
L+3                   ``FinalNorm`` (``norm``)
L+4                   ``OutputLayer`` (``final_linear``), only with no_weight_tying
====================  =========================================================

With tied weights the logits reuse layer 0's ``word_embeddings``. ``GPTModel`` wraps the list
for ``pipe_parallel_size == 0``; ``pipe.py`` maps the same list to DeepSpeed LayerSpecs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from megatron.model.block import LAYER_TYPES
from megatron.model.init import initialize_layer
from megatron.model.kv_cache import KVCache
from megatron.model.norms import build_norm
from megatron.model.positional import POSITIONAL
from megatron.model.sharding import apply_replicated, no_init
from megatron.model.spec import ModelSpec
from megatron.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron.parallel.groups import Group
from megatron.parallel.layers import ColumnParallelLinear, VocabParallelEmbedding
from megatron.parallel.mappings import (
    copy_to_tp,
    gather_from_sequence_parallel,
    scatter_to_sequence_parallel,
)
from megatron.parallel.random import RNGTracker


class EmbeddingLayer(nn.Module):
    """Token (and input-side position) embedding: ``(tokens, position_ids) -> [b, s, h]``."""

    def __init__(self, spec: ModelSpec, tp: Group, index: int, seed: int) -> None:
        super().__init__()
        self.tp, self.sp = tp, spec.sequence_parallel
        self.embedding_mult = spec.embedding_mult
        self.word_embeddings = VocabParallelEmbedding(spec.padded_vocab_size, spec.hidden_size,
                                                      tp, init_method=no_init)
        pos_cls = POSITIONAL.get(spec.pos_emb)
        self.position_embeddings = pos_cls(spec, tp) if pos_cls.stage == "input" else None
        self.dropout = nn.Dropout(spec.hidden_dropout)
        initialize_layer(self, index, spec, seed, tp)

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        x = self.word_embeddings(tokens)  # [b, s, h]
        if self.position_embeddings is not None and cache is not None:
            x = cache.embed(self.position_embeddings, x)  # at the cache step's position ids
        elif self.position_embeddings is not None:
            x = self.position_embeddings.embed(x, position_ids)
        if self.sp:
            x = scatter_to_sequence_parallel(x, self.tp)  # [b, s/tp, h]
        if self.embedding_mult != 1.0:  # muP
            x = x * self.embedding_mult
        return self.dropout(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Tied output head: ``[b, s, h] -> [b, s, V/tp]`` with this rank's vocab rows."""
        if self.sp:
            x = gather_from_sequence_parallel(x, self.tp)  # [b, s/tp, h] -> [b, s, h]
        else:
            x = copy_to_tp(x, self.tp)
        return nn.functional.linear(x, self.word_embeddings.weight)


class PassThrough(nn.Module):
    """A parameter-free slot that keeps GPT-NeoX's layer numbering (indices 1 and L+2)."""

    def __init__(self, spec: ModelSpec, tp: Group, index: int, seed: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FinalNorm(nn.Module):
    """The final norm (layer L+3), parameters under ``norm``."""

    def __init__(self, spec: ModelSpec, tp: Group, index: int, seed: int) -> None:
        super().__init__()
        self.norm = build_norm(spec.norm, spec.hidden_size, spec.norm_eps,
                               spec.use_bias_in_norms)
        self.tp, self.sp = tp, spec.sequence_parallel
        self.output_mult = spec.output_mult
        initialize_layer(self, index, spec, seed, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = apply_replicated(self.norm, x, self.tp, self.sp)
        # muP's logit multiplier, here so every head (tied, untied, fused loss) sees it.
        return x * self.output_mult if self.output_mult != 1.0 else x


class OutputLayer(nn.Module):
    """Untied output head (layer L+4): ``[b, s, h] -> [b, s, V/tp]`` as ``final_linear``."""

    def __init__(self, spec: ModelSpec, tp: Group, index: int, seed: int) -> None:
        super().__init__()
        self.final_linear = ColumnParallelLinear(spec.hidden_size, spec.padded_vocab_size, tp,
                                                 bias=False, init_method=no_init,
                                                 sequence_parallel=spec.sequence_parallel)
        initialize_layer(self, index, spec, seed, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_linear(x)


@dataclass(frozen=True)
class LayerEntry:
    """One slot of the ordered list: GPT-NeoX index, class, and its role for adapters."""

    index: int
    cls: type[nn.Module]
    role: str  # "embed" | "pass" | "block" | "norm" | "head" | "tied_head"


def layer_entries(spec: ModelSpec) -> list[LayerEntry]:
    """The ordered layers of the model (``tied_head`` reuses entry 0 and builds nothing)."""
    n = spec.num_layers
    entries = [LayerEntry(0, EmbeddingLayer, "embed"), LayerEntry(1, PassThrough, "pass")]
    entries += [LayerEntry(2 + i, LAYER_TYPES.get("transformer"), "block") for i in range(n)]
    entries += [LayerEntry(n + 2, PassThrough, "pass"), LayerEntry(n + 3, FinalNorm, "norm")]
    head = LayerEntry(n + 4, EmbeddingLayer, "tied_head") if spec.tie_word_embeddings \
        else LayerEntry(n + 4, OutputLayer, "head")
    return entries + [head]


class GPTModel(nn.Module):
    """The whole model in one process group stage: ``(tokens, position_ids) -> logits``.

    Layers live in ``self.sequential`` so checkpoint keys are ``sequential.<i>.<param>``.
    Input ``tokens``/``position_ids`` ``[b, s]``; output logits ``[b, s, V/tp]``.
    """

    def __init__(self, spec: ModelSpec, tp: Group, seed: int = 1234,
                 activation_checkpointing: bool = False, checkpoint_num_layers: int = 1,
                 rng_tracker: RNGTracker | None = None, fused_loss: bool = False) -> None:
        super().__init__()
        entries = [e for e in layer_entries(spec) if e.role != "tied_head"]
        self.sequential = nn.ModuleList(
            e.cls(spec, tp, e.index, seed, *([rng_tracker] if e.role == "block" else []))
            for e in entries)
        self.rng = rng_tracker
        self.tied = spec.tie_word_embeddings
        self.checkpointing = activation_checkpointing
        self.chunk = max(1, checkpoint_num_layers)
        self.blocks = range(2, 2 + spec.num_layers)
        self.spec = spec  # read by KVCache.allocate
        # Training output is the head's input; ``make_fused_loss_fn`` applies the head.
        self.fused_loss = fused_loss
        self.tp, self.sp = tp, spec.sequence_parallel

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        layers = [self.sequential[i] for i in self.blocks]
        for start in range(0, len(layers), self.chunk):
            chunk = layers[start : start + self.chunk]
            if self.checkpointing and self.training and self.rng is not None:
                x = self.rng.checkpoint(_run_chunk(chunk), x)  # also replays forked streams
            elif self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(_run_chunk(chunk), x, use_reentrant=False)
            else:
                x = _run_chunk(chunk)(x)
        return x

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor],
                cache: KVCache | None = None) -> torch.Tensor:
        """``(tokens, position_ids) [b, s] -> logits [b, s, V/tp]``.

        With ``cache`` (``KVCache.allocate(model, ...)``) the inputs hold only the new
        positions, and their keys and values are appended to the cache (``kv_cache.py``).
        """
        tokens, position_ids = inputs
        if cache is not None:
            return self._forward_cached(tokens, position_ids, cache)
        x = self.sequential[0](tokens, position_ids)  # [b, s, h]
        x = self.sequential[1](x)
        x = self._run_blocks(x)
        n = len(self.blocks)
        for layer in self.sequential[2 + n : 4 + n]:  # pass-through and final norm
            x = layer(x)
        if self.fused_loss and self.training:
            return self.head_input(x)  # [b, s, h]; the loss function applies the head
        return self.sequential[0].logits(x) if self.tied else self.sequential[4 + n](x)

    def _forward_cached(self, tokens: torch.Tensor, position_ids: torch.Tensor,
                        cache: KVCache) -> torch.Tensor:
        """Incremental decoding: only the new positions run; attention also reads the cache."""
        cache.begin(tokens, position_ids)
        x = self.sequential[0](tokens, position_ids, cache)  # [b, s_new, h]
        x = self.sequential[1](x)
        for i, index in enumerate(self.blocks):
            x = self.sequential[index](x, cache.layer(i))
        n = len(self.blocks)
        for layer in self.sequential[2 + n : 4 + n]:  # pass-through and final norm
            x = layer(x)
        cache.advance()
        return self.sequential[0].logits(x) if self.tied else self.sequential[4 + n](x)

    @property
    def head_weight(self) -> torch.Tensor:
        """The output projection ``[V/tp, h]`` (the word embeddings when tied)."""
        if self.tied:
            return self.sequential[0].word_embeddings.weight
        return self.sequential[-1].final_linear.weight

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, s, h]`` (``[b, s/tp, h]`` under SP) as the output projection sees it."""
        if self.sp:
            return gather_from_sequence_parallel(x, self.tp)
        return copy_to_tp(x, self.tp)


def _run_chunk(layers: list[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = layer(x)
        return x

    return run


def make_loss_fn(tp: Group) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``loss_fn(logits [b, s, V/tp], (labels, loss_mask)) -> mean loss over the mask``."""

    def loss_fn(logits: torch.Tensor, target: Any) -> torch.Tensor:
        labels, loss_mask = target
        per_token = vocab_parallel_cross_entropy(logits.float(), labels, tp)  # [b, s]
        mask = loss_mask.float().view(-1)
        return (per_token.view(-1) * mask).sum() / mask.sum().clamp(min=1.0)

    return loss_fn
