"""The machines a run will use: nodes, GPUs per node, CUDA or not.

`Resources` is an input to `derive`, so that deriving a config never probes hardware. Only
`Resources.detect` looks at the hostfile and, when an NVIDIA driver is present, at torch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, Origin, Problem

DEFAULT_HOSTFILE = "/job/hostfile"


def parse_hostfile(text: str, name: str = "hostfile") -> dict[str, int]:
    """Read `host slots=N` lines (blank lines and `#` comments ignored) into host -> slots."""
    hosts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = [p for p in parts[1:] if p.startswith("slots=")]
        if len(parts) != 2 or not slots or not slots[0][6:].isdigit():
            raise ConfigError([Problem("hostfile", "expected 'HOST slots=N'", line,
                                       Origin(name, number))])
        hosts[parts[0]] = int(slots[0][6:])
    return hosts


def parse_host_filter(spec: str) -> dict[str, list[int] | None]:
    """Read an include/exclude string such as `worker-0@worker-1:0,2` (None = whole host)."""
    result: dict[str, list[int] | None] = {}
    for item in filter(None, spec.split("@")):
        host, _, slots = item.partition(":")
        result[host] = [int(s) for s in slots.split(",")] if slots else None
    return result


def filter_hosts(hosts: Mapping[str, int], include: str | None,
                 exclude: str | None) -> dict[str, list[int]]:
    """Apply include/exclude filters to a hostfile; returns host -> slot indices kept."""
    kept = {host: list(range(n)) for host, n in hosts.items()}
    if include:
        wanted = parse_host_filter(include)
        kept = {h: (s if wanted[h] is None else [i for i in s if i in wanted[h]])
                for h, s in kept.items() if h in wanted}
    if exclude:
        for host, slots in parse_host_filter(exclude).items():
            if host in kept:
                kept[host] = [] if slots is None else [i for i in kept[host] if i not in slots]
    return {h: s for h, s in kept.items() if s}


def _get(runner: Any, key: str, default: Any = None) -> Any:
    if isinstance(runner, Mapping):
        return runner.get(key, default)
    return getattr(runner, key, default)


def _probe_cuda() -> tuple[bool, int]:
    """(CUDA usable, local device count); torch is imported only when a driver is present."""
    if not os.path.exists("/proc/driver/nvidia") and shutil.which("nvidia-smi") is None:
        return False, 0
    import torch

    if not torch.cuda.is_available():
        return False, 0
    return True, torch.cuda.device_count()


@dataclass(frozen=True)
class Resources:
    """Nodes and worker processes per node available to the run."""

    num_nodes: int = 1
    gpus_per_node: int = 1
    has_cuda: bool = False

    @property
    def world_size(self) -> int:
        """Total worker processes."""
        return self.num_nodes * self.gpus_per_node

    @classmethod
    def detect(cls, runner: Any = None) -> Resources:
        """Find the resources from the runner keys (mapping or NeoXArgs), hostfile and devices.

        Without CUDA the number of worker processes per node is `num_gpus`, or 1.
        """
        runner = runner if runner is not None else {}
        has_cuda, local = _probe_cuda()
        num_gpus = _get(runner, "num_gpus")
        num_nodes = _get(runner, "num_nodes", -1)
        path = _get(runner, "hostfile") or os.environ.get("DLTS_HOSTFILE", DEFAULT_HOSTFILE)
        if Path(path).is_file():
            hosts = filter_hosts(parse_hostfile(Path(path).read_text(), path),
                                 _get(runner, "include"), _get(runner, "exclude"))
            if hosts:
                counts = list(hosts.values())
                if num_nodes is not None and num_nodes > 0:
                    counts = counts[:num_nodes]
                per_node = num_gpus or min(len(s) for s in counts)
                return cls(len(counts), per_node, has_cuda)
        per_node = num_gpus or (local if has_cuda and local > 0 else 1)
        nodes = num_nodes if num_nodes is not None and num_nodes > 0 else 1
        return cls(nodes, per_node, has_cuda)
