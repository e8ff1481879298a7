"""Model weights in our DeepSpeed checkpoint layout, for any tensor/pipeline-parallel layout.

A training run writes ``<save>/global_step<N>/`` through DeepSpeed (FORMATS.md "Checkpoints"):

- ``pipe_parallel_size == 0``: ``mp_rank_<TP>_model_states.pt``, one per tensor-parallel rank,
  whose ``"module"`` is the rank's state dict with keys ``sequential.<i>.<param>``;
- ``pipe_parallel_size >= 1``: ``layer_<LL>-model_<TP>-model_states.pt``, the plain state dict
  of GPT-NeoX layer ``LL`` on rank ``TP`` (the ``mp_rank`` files then hold no weights).

Here the layout is detected from the files present, shards are merged with the model's own
sharding description (``shard_layout`` plus ``join_shards``/``take_shard``), and the result is
the canonical full state dict: the TP=1 one of the plain model. ``save_as_checkpoint`` writes
the inverse, loadable by the training engine with ``finetune: true`` (``load_module_only``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from megatron.model.gpt import GPTModel
from megatron.model.init import join_shards, take_shard
from megatron.model.sharding import shard_layout
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import Group

LOG = logging.getLogger(__name__)

MODEL_FILE = re.compile(r"mp_rank_(\d+)_model_states\.pt")
LAYER_FILE = re.compile(r"layer_(\d+)-model_(\d+)-model_states\.pt")
ZERO3_FILE = re.compile(r"zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt")
LATEST = "latest"
MANIFEST = "manifest.json"
"""The training engine refuses a checkpoint folder without this file list (name -> bytes)."""

StateDict = dict[str, torch.Tensor]


class CheckpointFormatError(Exception):
    """A checkpoint folder that cannot be read as, or does not match, the described model."""


@dataclass(frozen=True)
class CheckpointLayout:
    """What a checkpoint folder holds: tensor-parallel size and which file kind has weights."""

    tp: int
    pipeline: bool


def resolve_checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """The ``global_step<N>`` folder for ``path``: itself, or the tag ``latest`` names.

    Raises:
        CheckpointFormatError: when ``path`` is neither a checkpoint folder nor a save folder.
    """
    root = Path(path)
    if (root / LATEST).is_file():
        tag = (root / LATEST).read_text().strip()
        root = root / tag
    if not root.is_dir():
        raise CheckpointFormatError(f"{path}: no such checkpoint folder (expected a "
                                    "global_step<N> folder or a save folder with 'latest')")
    return root


def detect_layout(ckpt_dir: Path) -> CheckpointLayout:
    """Read the layout from file names; raises CheckpointFormatError for unknown layouts."""
    names = [p.name for p in ckpt_dir.iterdir()]
    layer_ranks = {int(m.group(2)) for n in names if (m := LAYER_FILE.fullmatch(n))}
    model_ranks = {int(m.group(1)) for n in names if (m := MODEL_FILE.fullmatch(n))}
    if layer_ranks:
        return CheckpointLayout(tp=_contiguous(layer_ranks, ckpt_dir), pipeline=True)
    if model_ranks:
        return CheckpointLayout(tp=_contiguous(model_ranks, ckpt_dir), pipeline=False)
    if any(ZERO3_FILE.fullmatch(n) for n in names):
        raise CheckpointFormatError(
            f"{ckpt_dir} is a ZeRO stage 3 checkpoint (weights partitioned over data-parallel "
            "ranks); consolidate it with DeepSpeed's zero_to_fp32.py first")
    raise CheckpointFormatError(f"{ckpt_dir} holds no mp_rank_XX_model_states.pt or "
                                "layer_XX-model_XX-model_states.pt files")


def _contiguous(ranks: set[int], ckpt_dir: Path) -> int:
    if ranks != set(range(len(ranks))):
        raise CheckpointFormatError(f"{ckpt_dir}: tensor-parallel ranks {sorted(ranks)} are not "
                                    "0..N-1; some files are missing")
    return len(ranks)


def torch_load(path: Path) -> Any:
    """``torch.load`` on CPU, weights only where the file allows it.

    DeepSpeed's ``mp_rank_XX_model_states.pt`` also holds the engine's client state (NumPy RNG
    state, config objects), which the weights-only unpickler refuses; only for those files,
    which our own training runs wrote, we retry with the full unpickler.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not MODEL_FILE.fullmatch(path.name):
            raise
        LOG.debug("%s holds non-tensor client state; loading it with the full unpickler", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_rank_state_dicts(ckpt_dir: Path, layout: CheckpointLayout) -> list[StateDict]:
    """Each tensor-parallel rank's weights, keyed ``sequential.<i>.<param>``."""
    if not layout.pipeline:
        shards = []
        for rank in range(layout.tp):
            blob = torch_load(ckpt_dir / f"mp_rank_{rank:02d}_model_states.pt")
            if not isinstance(blob, dict) or not isinstance(blob.get("module"), dict):
                raise CheckpointFormatError(f"{ckpt_dir}/mp_rank_{rank:02d}_model_states.pt has "
                                            "no 'module' state dict")
            shards.append(dict(blob["module"]))
        return shards
    shards = [{} for _ in range(layout.tp)]
    for path in sorted(ckpt_dir.iterdir()):
        if m := LAYER_FILE.fullmatch(path.name):
            layer, rank = int(m.group(1)), int(m.group(2))
            for key, value in torch_load(path).items():
                shards[rank][f"sequential.{layer}.{key}"] = value
    return shards


def full_shapes(spec: ModelSpec) -> dict[str, torch.Size]:
    """Every key of the canonical (TP=1, plain) state dict and its shape, built on ``meta``."""
    with torch.device("meta"):
        model = GPTModel(spec, Group())
    return {name: t.shape for name, t in model.state_dict().items()}


def _sharding(spec: ModelSpec, name: str) -> SimpleNamespace:
    """The sharding attributes the built parameter ``name`` would carry (``tp_dim``,
    ``tp_sections``), so the model's own ``join_shards``/``take_shard`` do the slicing."""
    dim, sections = shard_layout(spec, name)
    return SimpleNamespace(tp_dim=dim, tp_sections=sections)


def merge_shards(shards: list[StateDict], spec: ModelSpec) -> StateDict:
    """Join per-rank state dicts (in rank order) into the full TP=1 state dict."""
    keys = set(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != keys:
            diff = sorted(set(shard) ^ keys)[:5]
            raise CheckpointFormatError(f"tensor-parallel rank {rank} has different tensors "
                                        f"than rank 0 (e.g. {diff})")
    return {name: join_shards([s[name] for s in shards], _sharding(spec, name))
            for name in sorted(keys)}


def shard_state_dict(full: StateDict, spec: ModelSpec, tp_rank: int, tp_size: int) -> StateDict:
    """Tensor-parallel rank ``tp_rank``'s part of the full state dict (inverse of merging)."""
    tp = SimpleNamespace(rank=tp_rank, size=tp_size)
    for name, tensor in full.items():
        dim, _ = shard_layout(spec, name)
        if dim is not None and tensor.shape[dim] % tp_size:
            raise CheckpointFormatError(f"{name} has {tensor.shape[dim]} rows/columns along dim "
                                        f"{dim}, not divisible by tensor-parallel size {tp_size}")
    return {name: take_shard(t, _sharding(spec, name), tp).clone() for name, t in full.items()}


def check_state_dict(full: StateDict, spec: ModelSpec, source: str) -> None:
    """Raise CheckpointFormatError when ``full`` does not fit ``spec`` (keys or shapes)."""
    expected = full_shapes(spec)
    missing = sorted(set(expected) - set(full))
    unexpected = sorted(set(full) - set(expected))
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{source} does not match the model config: missing {missing[:6]}, unexpected "
            f"{unexpected[:6]} (is the config the one the checkpoint was trained with?)")
    for name, shape in expected.items():
        if full[name].shape != shape:
            raise CheckpointFormatError(f"{source}: {name} has shape {tuple(full[name].shape)}, "
                                        f"the config gives {tuple(shape)}")


def load_full_state_dict(ckpt_dir: str | os.PathLike[str], spec: ModelSpec) -> StateDict:
    """The full (TP=1, plain-model) state dict of a checkpoint written with any layout.

    Args:
        ckpt_dir: a ``global_step<N>`` folder, or a save folder whose ``latest`` names one.
        spec: the architecture the checkpoint was trained with.

    Raises:
        CheckpointFormatError: unknown layout, missing files, or tensors that do not fit spec.
    """
    folder = resolve_checkpoint_dir(ckpt_dir)
    layout = detect_layout(folder)
    full = merge_shards(load_rank_state_dicts(folder, layout), spec)
    check_state_dict(full, spec, str(folder))
    return full


def _layer_states(shard: StateDict) -> dict[int, StateDict]:
    """Split ``sequential.<i>.<param>`` keys into per-layer state dicts keyed by ``i``."""
    layers: dict[int, StateDict] = {}
    for name, tensor in shard.items():
        _, index, param = name.split(".", 2)
        layers.setdefault(int(index), {})[param] = tensor
    return layers


def _engine_state(module: StateDict | None, mp_world_size: int, iteration: int) -> dict:
    """The least DeepSpeed's ``load_checkpoint(load_module_only=True)`` reads, plus the
    counters a resume would look for (no optimizer or scheduler state: fine-tune only)."""
    return {"module": module, "dp_world_size": 1, "mp_world_size": mp_world_size,
            "global_steps": iteration, "global_samples": 0, "skipped_steps": 0,
            "iteration": iteration, "buffer_names": [], "optimizer": None,
            "lr_scheduler": None}


def _write_model_files(full: StateDict, spec: ModelSpec, folder: Path, tp: int,
                       pp: int, iteration: int) -> None:
    shards = [shard_state_dict(full, spec, rank, tp) for rank in range(tp)]
    if pp == 0:
        for rank, shard in enumerate(shards):
            torch.save(_engine_state(shard, tp, iteration),
                       folder / f"mp_rank_{rank:02d}_model_states.pt")
        return
    # The pipeline engine reads weights from the layer files; its mp_rank files (one per
    # model-parallel rank of a replica, pp * tp) carry only the engine state.
    for rank in range(pp * tp):
        torch.save(_engine_state(None, pp * tp, iteration),
                   folder / f"mp_rank_{rank:02d}_model_states.pt")
    for rank, shard in enumerate(shards):
        for index, state in _layer_states(shard).items():
            torch.save(state, folder / f"layer_{index:02d}-model_{rank:02d}-model_states.pt")


def write_manifest(folder: Path) -> None:
    """List every file and its size, as the training engine checks before loading."""
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(sizes, indent=1))


def save_as_checkpoint(full: StateDict, spec: ModelSpec, save_dir: str | os.PathLike[str], *,
                       tp: int = 1, pp: int = 0, iteration: int = 0,
                       config_files: dict[str, str] | None = None) -> Path:
    """Write ``full`` as our DeepSpeed checkpoint ``<save_dir>/global_step<iteration>``.

    The result loads with ``finetune: true`` (weights only) at tensor-parallel size ``tp`` and
    pipeline size ``pp`` (0: plain model files; >= 1: per-layer files, any pipeline depth).

    Args:
        full: the canonical full state dict (``load_full_state_dict``'s result).
        spec: the architecture ``full`` belongs to (checked).
        save_dir: the save folder; ``latest`` is written there.
        tp: tensor-parallel size to shard for.
        pp: pipe_parallel_size of the run that will load it.
        iteration: the step number in the tag.
        config_files: file name -> YAML text, stored under ``configs/`` beside the weights.

    Returns:
        The checkpoint folder.
    """
    check_state_dict(full, spec, "the state dict to save")
    if tp < 1 or pp < 0:
        raise CheckpointFormatError(f"tp must be >= 1 and pp >= 0, got tp={tp}, pp={pp}")
    root = Path(save_dir)
    tag = f"global_step{iteration}"
    folder = root / tag
    folder.mkdir(parents=True, exist_ok=True)
    _write_model_files(full, spec, folder, tp, pp, iteration)
    if config_files:
        (folder / "configs").mkdir(exist_ok=True)
        for name, text in config_files.items():
            (folder / "configs" / Path(name).name).write_text(text)
    write_manifest(folder)
    (root / LATEST).write_text(tag)
    return folder

