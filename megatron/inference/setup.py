"""Build a model for generation or evaluation from a config, in any parallel layout.

Inference always runs the plain (non-pipelined) model: the world is split into
``model_parallel_size`` tensor-parallel ranks times data-parallel replicas, whatever
``pipe_parallel_size`` the checkpoint was trained with. Weights come from ``load`` through
``megatron.model.checkpoint_io``, which reads a checkpoint of any TP/PP/DP layout into one
full state dict and cuts this rank's tensor-parallel slice from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from megatron.inference.decoder import CachedDecoder, RecomputeDecoder
from megatron.inference.errors import InferenceError
from megatron.inference.generation import GenerationLimits, TextGenerator, TokenSync
from megatron.inference.sampling import SamplingParams
from megatron.model import ModelSpec, build_model
from megatron.parallel import ParallelLayout, ProcessGroups
from megatron.parallel.groups import Group

LOG = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Model dtype by the config's derived ``precision``."""


@dataclass
class InferenceModel:
    """A loaded model with everything generation and evaluation need."""

    args: Any
    groups: ProcessGroups
    tokenizer: Any
    spec: ModelSpec
    model: nn.Module

    @property
    def is_rank0(self) -> bool:
        return not dist.is_initialized() or dist.get_rank() == 0

    def decoder(self) -> RecomputeDecoder:
        """The step interface: the KV cache unless ``recompute`` is set (GPT-NeoX's key)."""
        cls = RecomputeDecoder if getattr(self.args, "recompute", False) else CachedDecoder
        return cls(self.model, self.groups.tp, self.tokenizer.vocab_size)

    def text_generator(self, batch_size: int | None = None,
                       stop_tokens: frozenset[int] = frozenset()) -> TextGenerator:
        """A ``TextGenerator`` with the config's sampling keys and a shared seed."""
        a = self.args
        params = SamplingParams(float(a.temperature), int(a.top_k), float(a.top_p))
        stop_tokens = stop_tokens or stop_token_ids(self.tokenizer, a.stop_tokens)
        limits = GenerationLimits(int(a.maximum_tokens), self.spec.seq_length, stop_tokens)
        gen = torch.Generator().manual_seed(int(a.seed))  # identical on every TP rank
        size = batch_size or int(getattr(a, "train_micro_batch_size_per_gpu", None) or 1)
        return TextGenerator(self.decoder(), self.tokenizer, limits, params, size, gen,
                             tp_sync(self.groups.tp))


def stop_token_ids(tokenizer: Any, stop_tokens: list[str] | None) -> frozenset[int]:
    """Token ids of the config's `stop_tokens`; each string must be exactly one token."""
    ids = set()
    for text in stop_tokens or []:
        tokens = tokenizer.tokenize(text)
        if len(tokens) != 1:
            raise InferenceError(
                f"stop_tokens entry {text!r} is {len(tokens)} tokens with this tokenizer "
                f"({tokens}); each stop token must be exactly one token"
            )
        ids.add(tokens[0])
    return frozenset(ids)


def tp_sync(tp: Group) -> TokenSync | None:
    """Broadcast sampled tokens from the first tensor-parallel rank to the others."""
    if tp.size == 1:
        return None

    def sync(tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.contiguous()
        dist.broadcast(tokens, src=tp.src_rank, group=tp.group)
        return tokens

    return sync


def inference_groups(args: Any) -> ProcessGroups:
    """Groups for ``model_parallel_size`` TP ranks and data parallelism over the rest."""
    if not dist.is_initialized():
        if int(args.model_parallel_size) > 1:
            raise InferenceError(f"model_parallel_size = {args.model_parallel_size} needs "
                                 "torch.distributed; start through deepy.py")
        return ProcessGroups.single()
    layout = ParallelLayout.from_world(dist.get_world_size(), tp=int(args.model_parallel_size),
                                       pp=0, rank=dist.get_rank())
    return ProcessGroups.build(layout)


def build_inference_model(args: Any, tokenizer: Any, spec: ModelSpec,
                          groups: ProcessGroups) -> InferenceModel:
    """Build this rank's model, load ``args.load`` when set, and switch to eval mode."""
    model, _ = build_model(spec, groups, pipe_parallel_size=0, seed=int(args.seed))
    if getattr(args, "load", None):
        load_weights(model, args.load, spec, groups.tp, getattr(args, "iteration", None))
    else:
        LOG.warning("no 'load' checkpoint set: using randomly initialised weights")
    dtype = DTYPES.get(getattr(args, "precision", "fp32") or "fp32", torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return InferenceModel(args, groups, tokenizer, spec, model.to(device, dtype).eval())


def load_weights(model: nn.Module, load_dir: str, spec: ModelSpec, tp: Group,
                 iteration: int | None = None) -> None:
    """Load this rank's slice of the newest complete checkpoint under ``load_dir``.

    Raises:
        InferenceError: no complete checkpoint, no checkpoint reader, or mismatched weights.
    """
    from megatron.training.checkpointing import find_loadable_tag

    tag = find_loadable_tag(load_dir, iteration)
    if tag is None:
        raise InferenceError(f"load = {load_dir!r} holds no complete checkpoint; train first "
                             "or point 'load' at a folder with a 'latest' file")
    try:
        from megatron.model import checkpoint_io
    except ImportError as err:
        raise InferenceError("megatron.model.checkpoint_io is missing; cannot read "
                             f"checkpoints ({err})") from err
    try:
        full = checkpoint_io.load_full_state_dict(Path(load_dir) / tag, spec)
        shard = checkpoint_io.shard_state_dict(full, spec, tp.rank, tp.size)
    except checkpoint_io.CheckpointFormatError as err:
        raise InferenceError(f"cannot load weights from {Path(load_dir) / tag}: {err}") from err
    missing, unexpected = model.load_state_dict(shard, strict=False)
    if missing or unexpected:
        raise InferenceError(f"checkpoint {Path(load_dir) / tag} does not fit the model: "
                             f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    LOG.info("loaded weights from %s", Path(load_dir) / tag)


def start_inference(args: Any) -> InferenceModel:
    """Worker start-up for generate.py and evaluate.py: distributed init, tokenizer, model."""
    from megatron.tokenizer import build_tokenizer
    from megatron.training.engine import build_spec, init_distributed
    from megatron.training.state import seed_everything

    init_distributed(args)
    seed_everything(int(args.seed))
    groups = inference_groups(args)
    tokenizer = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file)
    spec = build_spec(args, tokenizer)
    if args.use_mup:  # the logit multiplier depends on the width against the base shapes
        from megatron.training.mup import prepare_spec

        spec = prepare_spec(spec, args)
    return build_inference_model(args, tokenizer, spec, groups)
