"""Environment variables that must reach every worker, through DeepSpeed's own channels.

DeepSpeed's multi-node backends do not copy the launching shell's environment: pdsh starts a
fresh ssh login and ``mpirun`` forwards only ``-x`` variables (slurm's ``--export=ALL`` is the
exception). The runner forwards a variable when its name starts with an entry of
``deepspeed.launcher.runner.EXPORT_ENVS`` (by default ``PYTHON``, ``MLFLOW``, ``MV2``, ``UCX``,
plus ``NCCL`` on CUDA) or when it is a ``KEY=VALUE`` line of ``.deepspeed_env`` in the working
directory or in ``~``. This module chooses the extra variables and feeds either channel.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from megatron.launch.errors import LaunchError

logger = logging.getLogger(__name__)

# Prefixes of variables a worker needs beyond DeepSpeed's own list: the W&B key and mode,
# HF caches/offline switches, torch/JIT-op caches, thread counts, comm-library tuning and
# the allocator and malloc settings of allocator.py.
WORKER_ENV_PREFIXES: tuple[str, ...] = (
    "WANDB_",
    "HF_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "TORCH_",
    "OMP_",
    "GLOO_",
    "NCCL_",
    "FI_",
    "DS_",
    "CUDA_HOME",
    "CUDA_LAUNCH_BLOCKING",
    "LD_LIBRARY_PATH",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
    "MALLOC_CONF",
)

# Set per node or per rank by the launcher itself; a copy of the head node's value is wrong.
NEVER_EXPORT = frozenset(
    {"CUDA_VISIBLE_DEVICES", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK"}
)

_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def worker_exports(
    environ: Mapping[str, str],
    *,
    prefixes: Iterable[str] = WORKER_ENV_PREFIXES,
    names: Iterable[str] = (),
) -> dict[str, str]:
    """Pick the variables of ``environ`` that workers need, sorted by name.

    Args:
        environ: the launching process's environment (``os.environ``).
        prefixes: a variable is picked when its name starts with one of these.
        names: exact names to pick as well (for example ``PATH`` inside identical containers).

    Raises:
        LaunchError: when a picked value holds a newline, which neither ``.deepspeed_env``
            nor a pdsh command line can carry.
    """
    prefix_tuple, exact = tuple(prefixes), set(names)
    picked = {
        key: value
        for key, value in sorted(environ.items())
        if (key in exact or key.startswith(prefix_tuple)) and key not in NEVER_EXPORT
    }
    for key, value in picked.items():
        if "\n" in value or "\r" in value:
            raise LaunchError(f"environment variable {key} holds a newline; workers cannot get it")
    return picked


def export_env(export_list: list[str], names: Iterable[str]) -> list[str]:
    """Add variable names to DeepSpeed's export list so its runner forwards them.

    Pass ``deepspeed.launcher.runner.EXPORT_ENVS`` as ``export_list``; the runner matches its
    entries as name prefixes against ``os.environ`` when it builds the worker command, so the
    values must be in ``os.environ`` by then. Names an entry already covers are skipped.

    Returns:
        The names that were added, in order.
    """
    added = []
    for name in names:
        if not _NAME.match(name):
            raise LaunchError(f"cannot export {name!r}: not a valid environment variable name")
        if not any(name.startswith(entry) for entry in export_list):
            export_list.append(name)
            added.append(name)
    return added


def _read_env_file(path: Path) -> dict[str, str]:
    """Existing ``KEY=VALUE`` lines; lines DeepSpeed would choke on are dropped with a warning."""
    if not path.is_file():
        return {}
    kept: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            logger.warning("%s:%d: dropped line without KEY=VALUE", path, lineno)
            continue
        kept[key.strip()] = value
    return kept


def write_deepspeed_env(exports: Mapping[str, str], path: str | Path = ".deepspeed_env") -> Path:
    """Merge ``exports`` into a DeepSpeed environment file, readable only by its owner.

    DeepSpeed's runner reads ``./.deepspeed_env`` (and ``~/.deepspeed_env``) and forwards each
    line to every worker. Keys already in the file are kept unless ``exports`` sets them. The
    file is written to a temporary name and renamed, so a reader never sees half a file.

    Returns:
        The path written.
    """
    target = Path(path)
    merged = _read_env_file(target)
    for key, value in exports.items():
        if not _NAME.match(key) or "\n" in value or "\r" in value:
            raise LaunchError(f"cannot write {key!r} to {target}: bad name or newline in value")
        merged[key] = value
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(f"{key}={value}\n" for key, value in merged.items())
    os.replace(tmp, target)
    return target


def redact(exports: Mapping[str, str]) -> dict[str, str]:
    """A copy safe to log: values of names that look secret (``*KEY*``, ``*TOKEN*``) masked."""
    return {key: ("***" if _SECRET.search(key) else value) for key, value in exports.items()}
