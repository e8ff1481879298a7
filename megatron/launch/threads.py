"""Torch threads per worker: share the node's cores instead of every worker taking them all.

DeepSpeed's launcher sets ``OMP_NUM_THREADS`` only with ``--bind_cores_to_rank`` (torchrun
sets it to 1), so without it each of N workers on a node starts one thread per core: N times
more threads than cores, which on a CPU run makes every GEMM fight the other ranks' threads.
``deepy.py`` therefore gives each worker ``cores // workers_per_node`` threads, unless the user
set ``OMP_NUM_THREADS`` (always respected) or a node runs one worker (torch's default of one
thread per core is then right).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OMP_NUM_THREADS = "OMP_NUM_THREADS"


def thread_env(environ: Mapping[str, str], workers_per_node: int,
               cores: int | None = None) -> dict[str, str]:
    """The variables to add to ``environ`` for the workers: none if the user chose already."""
    if OMP_NUM_THREADS in environ or workers_per_node <= 1:
        return {}
    cores = cores or len(os.sched_getaffinity(0))
    return {OMP_NUM_THREADS: str(max(1, cores // workers_per_node))}
