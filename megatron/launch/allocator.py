"""glibc malloc settings for the workers: keep large tensors' memory instead of unmapping it.

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold
(at most 32 MiB by default) with a fresh ``mmap`` and gives it back with ``munmap`` when freed,
so each step's large activations, logits and gradients are page-faulted in again, 4 KiB at a
time. On the project's 2-core VMs that was 5-20% of a training step (a 206 MB tensor copy:
109 ms, of which ~95 ms page faults). Two glibc tunables remove it:

- ``mmap_threshold``: serve large blocks from the heap, which is reused between steps;
- ``trim_threshold``: do not return the heap's free top to the kernel after each step.

``glibc.malloc.hugetlb=1`` (transparent huge pages for malloc) was measured too and left out:
alone it made steps ~10% slower (the kernel zeroes and compacts 2 MiB pages on every fault),
and with the two above it raised the peak resident size by a further ~10%.

The price is that freed memory stays with the process until it exits, and heap fragmentation
raises the peak resident size, usually by 3-8% (19M bench shape: 2.63 GB without, 2.71-2.83
GB with, once 3.22 GB; ``tools/benchmark.py``). ``deepy.py`` sets these for its workers
unless ``GLIBC_TUNABLES`` is already set: set it yourself (an empty value turns this off) to
choose otherwise. Other C libraries ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping

GLIBC_TUNABLES = "GLIBC_TUNABLES"
WORKER_MALLOC_TUNABLES = ":".join((
    f"glibc.malloc.mmap_threshold={2**31 - 1}",
    f"glibc.malloc.trim_threshold={2**34}",
))
"""The value workers get: mmap only above 2 GiB, trim only above 16 GiB of free heap top."""


def allocator_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to ``environ`` for the workers: none if the user chose already."""
    if GLIBC_TUNABLES in environ:
        return {}
    return {GLIBC_TUNABLES: WORKER_MALLOC_TUNABLES}
