"""List the tensors of a checkpoint, or compare two checkpoints tensor by tensor.

    python tools/inspect_checkpoints.py CKPT [--config_file CFG.yml ...] [--raw]
    python tools/inspect_checkpoints.py CKPT_A CKPT_B [--atol 0.0]

CKPT is a ``global_step<N>`` folder, a save folder with ``latest``, or one ``.pt`` file. With
the run's config (``--config_file``, else the folder's ``configs/``) tensor-parallel shards are
merged and names are the full model's (``sequential.<i>.<param>``), so checkpoints written
with different layouts compare directly; ``--raw`` (or no config) lists each file's tensors as
stored, as ``<file>:<name>``. Listing prints name, shape, dtype and L2 norm; comparing prints
the max absolute difference per tensor and exits 1 when any exceeds ``--atol`` or the names
or shapes differ.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

try:
    import tools.convert_to_hf  # noqa: F401
except ImportError:  # run as `python tools/inspect_checkpoints.py`: repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron.model.checkpoint_io import (
    CheckpointFormatError,
    resolve_checkpoint_dir,
    torch_load,
)

LOG = logging.getLogger("inspect_checkpoints")
StateDict = dict[str, torch.Tensor]


def _tensors(prefix: str, obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists, named by its path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(f"{prefix}.{key}" if prefix else str(key), value)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _tensors(f"{prefix}.{i}", value)


def raw_tensors(path: Path) -> StateDict:
    """Tensors as stored: the model weights of each ``*.pt`` file, named ``<file>:<name>``."""
    files = [path] if path.is_file() else sorted(resolve_checkpoint_dir(path).glob("*.pt"))
    out: StateDict = {}
    for file in files:
        blob = torch_load(file)
        # An engine file's weights sit under "module"; optimizer state is not model weights.
        weights = blob["module"] if isinstance(blob, dict) and "module" in blob else blob
        for name, tensor in _tensors("", weights):
            out[f"{file.name}:{name}"] = tensor
    return out


def merged_tensors(path: Path, config_files: list[str] | None) -> StateDict | None:
    """The full model state dict, or None when no config describes the model."""
    from tools.convert_to_hf import load_args, load_checkpoint

    folder = resolve_checkpoint_dir(path)
    paths = config_files or sorted(str(p) for p in (folder / "configs").glob("*.y*ml"))
    if not paths:
        return None
    _, full = load_checkpoint(folder, load_args(paths))
    return full


def read(path: str, config_files: list[str] | None, raw: bool) -> StateDict:
    target = Path(path)
    if raw or target.is_file():
        return raw_tensors(target)
    full = merged_tensors(target, config_files)
    if full is None:
        LOG.warning("%s has no configs/: listing the stored shards (--raw)", target)
        return raw_tensors(target)
    return full


def listing(tensors: StateDict) -> list[str]:
    """One line per tensor: name, shape, dtype, L2 norm (in fp64)."""
    return [f"{name}\t{tuple(t.shape)}\t{str(t.dtype).removeprefix('torch.')}\t"
            f"{t.double().norm().item():.6g}" for name, t in tensors.items()]


def compare(a: StateDict, b: StateDict, atol: float) -> tuple[list[str], bool]:
    """Lines describing every difference, and whether the two agree within ``atol``."""
    lines, same = [], True
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            lines.append(f"{name}\tonly in {'first' if name in a else 'second'}")
            same = False
        elif a[name].shape != b[name].shape:
            lines.append(f"{name}\tshape {tuple(a[name].shape)} vs {tuple(b[name].shape)}")
            same = False
        else:
            diff = (a[name].double() - b[name].double()).abs().max().item() \
                if a[name].numel() else 0.0
            lines.append(f"{name}\tmax_abs_diff\t{diff:.6g}")
            same = same and diff <= atol
    return lines, same


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="one checkpoint to list, two to compare")
    parser.add_argument("--config_file", nargs="+", default=None,
                        help="the run's YAML files (default: <checkpoint>/configs/*.yml)")
    parser.add_argument("--raw", action="store_true", help="list stored shards, no merging")
    parser.add_argument("--atol", type=float, default=0.0, help="allowed max abs difference")
    opts = parser.parse_args(argv)
    if len(opts.paths) > 2:
        parser.error("give one checkpoint to list or two to compare")
    return opts


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = parse_args(argv)
    try:
        states = [read(p, opts.config_file, opts.raw) for p in opts.paths]
    except (CheckpointFormatError, ValueError, OSError) as exc:
        LOG.error("%s", exc)
        return 2
    if len(states) == 1:
        print("\n".join(listing(states[0])))
        return 0
    lines, same = compare(*states, atol=opts.atol)
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
