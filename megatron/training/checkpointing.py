"""Checkpoints in DeepSpeed's layout, made atomic and checked on load.

DeepSpeed writes `<save>/global_step<N>/...` itself. What it does not do is make the
checkpoint visible only once every rank has finished (it writes `latest` from rank 0
without waiting), or notice a truncated file on load. So we save with
`save_latest=False`, wait for all ranks, then rank 0 writes a manifest of every file and
its size and finally replaces `latest` atomically. A checkpoint without a manifest, or
whose files no longer match it, is incomplete, and loading falls back to the newest
complete one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

TAG_PREFIX = "global_step"
MANIFEST = "manifest.json"
LATEST = "latest"


class CheckpointError(Exception):
    """A checkpoint that was asked for cannot be used."""


def tag_for(iteration: int) -> str:
    return f"{TAG_PREFIX}{iteration}"


def iteration_of(tag: str) -> int | None:
    m = re.fullmatch(rf"{TAG_PREFIX}(\d+)", tag)
    return int(m.group(1)) if m else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _file_sizes(ckpt_dir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(ckpt_dir)): p.stat().st_size
        for p in sorted(ckpt_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def save_checkpoint(
    engine: Any,
    save_dir: str,
    iteration: int,
    client_state: dict[str, Any],
    config_files: dict[str, str],
    *,
    is_rank0: bool,
    barrier: Callable[[], None],
) -> Path:
    """Save through DeepSpeed, then publish the checkpoint once every rank is done."""
    tag = tag_for(iteration)
    engine.save_checkpoint(save_dir, tag=tag, client_state=client_state, save_latest=False)
    barrier()  # every rank's files are on disk past this point
    ckpt_dir = Path(save_dir) / tag
    if is_rank0:
        config_dir = ckpt_dir / "configs"
        config_dir.mkdir(parents=True, exist_ok=True)
        for name, text in config_files.items():
            (config_dir / Path(name).name).write_text(text)
        _write_atomic(ckpt_dir / MANIFEST, json.dumps(_file_sizes(ckpt_dir), indent=1))
        _write_atomic(Path(save_dir) / LATEST, tag)
    barrier()
    return ckpt_dir


def checkpoint_problem(ckpt_dir: Path) -> str | None:
    """Why `ckpt_dir` cannot be loaded, or None when it is complete."""
    manifest = ckpt_dir / MANIFEST
    if not manifest.is_file():
        return f"{ckpt_dir} has no {MANIFEST}: it was not completely written"
    expected = json.loads(manifest.read_text())
    actual = _file_sizes(ckpt_dir)
    for name, size in expected.items():
        if name not in actual:
            return f"{ckpt_dir / name} is missing"
        if actual[name] != size:
            return f"{ckpt_dir / name} has {actual[name]} bytes, expected {size} (truncated?)"
    return None


def list_tags(save_dir: str) -> list[str]:
    """Checkpoint tags under `save_dir`, oldest first."""
    root = Path(save_dir)
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and iteration_of(p.name) is not None]
    return sorted(tags, key=lambda t: iteration_of(t) or 0)


def find_loadable_tag(load_dir: str | None, iteration: int | None = None) -> str | None:
    """The tag to resume from: the requested iteration, `latest`, or the newest complete one.

    Returns None when there is nothing to load (an empty or absent folder is a fresh start).
    """
    if not load_dir:
        return None
    root = Path(load_dir)
    if iteration is not None:
        tag = tag_for(iteration)
        problem = checkpoint_problem(root / tag)
        if problem:
            raise CheckpointError(f"cannot load iteration {iteration} from {load_dir}: {problem}")
        return tag
    latest = root / LATEST
    if latest.is_file():
        tag = latest.read_text().strip()
        problem = checkpoint_problem(root / tag)
        if problem is None:
            return tag
        LOG.warning("latest checkpoint unusable: %s; looking for an older one", problem)
    for tag in reversed(list_tags(load_dir)):
        problem = checkpoint_problem(root / tag)
        if problem is None:
            LOG.warning("resuming from %s, the newest complete checkpoint", root / tag)
            return tag
        LOG.warning("skipping %s", problem)
    return None


def prune_checkpoints(save_dir: str, keep_last_n: int | None) -> list[str]:
    """Delete all but the newest `keep_last_n` complete checkpoints; returns the deleted tags."""
    if not keep_last_n:
        return []
    tags = list_tags(save_dir)
    doomed = tags[:-keep_last_n] if len(tags) > keep_last_n else []
    for tag in doomed:
        shutil.rmtree(Path(save_dir) / tag, ignore_errors=True)
    return doomed


def save_iterations(
    train_iters: int,
    checkpoint_factor: int | float | None,
    checkpoint_scale: str = "linear",
    extra_save_iters: Iterable[int] | None = None,
) -> set[int]:
    """Iterations at which GPT-NeoX saves: every `factor` steps, or at powers of `factor`.

    As in GPT-NeoX, counting starts at `factor` itself (never step 0 or 1) and stops
    before `train_iters`; the loop saves the final iteration separately.
    """
    iters: set[int] = set(extra_save_iters or [])
    if checkpoint_factor:
        factor = float(checkpoint_factor)
        step = factor
        while step < train_iters:
            iters.add(int(step))
            step = step * factor if checkpoint_scale == "log" else step + factor
    return {i for i in iters if 0 < i <= train_iters}
