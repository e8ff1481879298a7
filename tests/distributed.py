"""run_distributed: run a function on several real CPU processes (gloo) from a pytest test.

Each rank is a ``spawn``-ed process that joins a gloo process group through a ``FileStore``
in a fresh temporary directory (no ports, so parallel test runs cannot collide). The first
rank that raises makes the whole run fail: its traceback text is re-raised in pytest and the
other ranks (possibly stuck in a collective) are killed. A hard timeout kills stragglers.

``fn`` must be a module-level function ``fn(rank, world_size, *args)``. It is found again in
the child by module name or, failing that, by file path, so test modules need not be
importable packages.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

_SETTLE_S = 2.0
"""Seconds to keep collecting reports after the first failure."""


class DistributedTestError(AssertionError):
    """A rank raised, died, or did not finish in time."""


def _resolve(module_name: str, path: str | None, qualname: str) -> Callable[..., Any]:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        if path is None:
            raise
        spec = importlib.util.spec_from_file_location(f"_dist_{module_name}", path)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _worker(target: tuple[str, str | None, str], rank: int, world_size: int, store_path: str,
            results: Any, args: tuple[Any, ...]) -> None:
    # What torchrun / the deepspeed launcher would set; DeepSpeed's engine insists on LOCAL_RANK.
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_WORLD_SIZE": str(world_size)})
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # the test machine is small and shared
    from megatron.utils.deepspeed_ops import skip_unused_cpu_ops

    skip_unused_cpu_ops()  # no minutes of g++ for an op only DeepSpeed inference uses
    try:
        fn = _resolve(*target)
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
        try:
            fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        results.put((rank, None))
    except BaseException as exc:  # report everything, including SystemExit, to the parent
        results.put((rank, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _stop(procs: list[Any], grace: float) -> None:
    """Let finished ranks exit for ``grace`` seconds, then terminate, then kill."""
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _deaths(procs: list[Any], done: set[int]) -> list[str]:
    return [f"rank {r} died with exit code {p.exitcode}" for r, p in enumerate(procs)
            if r not in done and p.exitcode not in (None, 0)]


def _collect(procs: list[Any], results: Any, timeout: float) -> list[str]:
    """Wait for every rank; return failure texts (empty when all passed).

    After the first failure keep listening for a moment: when one rank crashes, its peers
    soon raise "connection closed" errors, and the crash (the root cause) should be reported
    first rather than whichever message happened to arrive first.
    """
    deadline = time.monotonic() + timeout
    done: set[int] = set()
    errors: list[str] = []
    while len(done) < len(procs) and time.monotonic() < deadline:
        try:
            rank, error = results.get(timeout=0.2)
        except queue.Empty:
            if _deaths(procs, done) and not errors:
                deadline = min(deadline, time.monotonic() + _SETTLE_S)
            continue
        done.add(rank)
        if error is not None:
            if not errors:
                deadline = min(deadline, time.monotonic() + _SETTLE_S)
            errors.append(f"rank {rank} raised {error}")
    failures = _deaths(procs, done) + errors
    if not failures and len(done) < len(procs):
        missing = sorted(set(range(len(procs))) - done)
        failures.append(f"timed out after {timeout:.0f} s waiting for rank(s) {missing}")
    return failures


def run_distributed(fn: Callable[..., Any], world_size: int = 2, timeout: float = 120.0,
                    *args: Any) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes.

    Raises:
        DistributedTestError: with the failing rank's traceback if any rank raised, died,
            or the run exceeded ``timeout`` seconds.
    """
    module = sys.modules.get(fn.__module__)
    path = getattr(module, "__file__", None)
    target = (fn.__module__, path, fn.__qualname__)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="run_distributed_") as tmp:
        store_path = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_worker,
                             args=(target, r, world_size, store_path, results, args))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        failures = ["interrupted"]
        try:
            failures = _collect(procs, results, timeout)
        finally:
            _stop(procs, grace=0.0 if failures else 10.0)
    if failures:
        raise DistributedTestError(f"{fn.__qualname__} on {world_size} ranks: "
                                   + "\n\n".join(failures))
