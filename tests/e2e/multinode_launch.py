"""Helpers for two-"node" runs on one machine: DeepSpeed's no_ssh mode, one launch per node.

Each node is its own ``./deepy.py train.py cfg.yml`` with ``no_ssh: true`` and its
``node_rank``; both read the same hostfile of two made-up host names (DeepSpeed never
resolves them in no_ssh mode) and rendezvous on ``master_addr: 127.0.0.1``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.launch import start_deepy

HOSTS = ("node-0", "node-1")


def write_hostfile(path: Path, slots: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{host} slots={slots}\n" for host in HOSTS))
    return path


def node_configs(base: dict, workdir: Path) -> list[dict]:
    """One config per node: same run, same port and checkpoints; own node_rank and log_dir."""
    hostfile = write_hostfile(workdir / "hostfile")
    configs = []
    for rank in range(len(HOSTS)):
        config = dict(base)
        config.update(
            hostfile=str(hostfile),
            no_ssh=True,
            node_rank=rank,
            launcher="pdsh",
            master_addr="127.0.0.1",
            log_dir=str(workdir / f"node{rank}" / "logs"),
        )
        config.pop("num_gpus", None)  # the hostfile's slots=1 says one process per node
        configs.append(config)
    return configs


def start_nodes(configs: list[dict], workdir: Path) -> list[subprocess.Popen]:
    """Start every node's launch, each in its own session so a test can kill one tree."""
    return [start_deepy(config, workdir / f"node{rank}") for rank, config in enumerate(configs)]


def node_log(workdir: Path, rank: int) -> str:
    return (workdir / f"node{rank}" / "deepy.log").read_text(errors="replace")


def stop(procs: list[subprocess.Popen]) -> None:
    """Kill whatever a test left running (only the process groups it started)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [proc.wait(timeout=max(deadline - time.monotonic(), 1)) for proc in procs]


def wait_for_file(path: Path, procs: list[subprocess.Popen], timeout: float) -> None:
    """Wait until ``path`` exists; fail early if a node exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        exited = [proc.returncode for proc in procs if proc.poll() is not None]
        if exited:
            raise AssertionError(f"a node exited ({exited}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


def manifest_problems(ckpt_dir: Path) -> list[str]:
    """Independent check of a checkpoint directory against its manifest.json."""
    manifest = ckpt_dir / "manifest.json"
    if not manifest.is_file():
        return [f"no manifest in {ckpt_dir}"]
    problems = []
    for name, size in json.loads(manifest.read_text()).items():
        path = ckpt_dir / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif path.stat().st_size != size:
            problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {size}")
    return problems
