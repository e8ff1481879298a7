"""The workers' malloc: jemalloc where one is found, else glibc with settings that reuse blocks.

PyTorch's CPU tensors come from ``malloc``, and every training step frees and requests the same
sizes again: activations, their gradients, chunks of logits, weight gradients.

**jemalloc** (``ALLOCATORS["jemalloc"]``) serves them from size classes and reuses freed extents
in place. With ``JEMALLOC_CONF`` it never hands freed pages back to the kernel: its default
purges freed blocks of 8 MiB and more at once, so they were faulted in and zeroed again every
step (2-process steps 10-35% slower than glibc's in 4 paired runs). Measured on Pythia-70M's
bench shape (2 cores, ``./deepy.py``, 3 alternating rounds, peak resident size of the largest
rank): 1 process fp32 2677 -> 2461 MB, bf16 2305 -> 2081 MB; 2 processes fp32 1864 -> 1796
MB, bf16 1597 -> 1525 MB; no page faults in a steady step (glibc with the tunables below: 77-112k);
step times within the host's noise (README, performance section). glibc lost that memory to
fragmentation: blocks freed between live ones that the next step's requests did not fit, so
its heap grew over the first steps to ~500 MB more than it ever held at once.

**glibc** (``ALLOCATORS["glibc"]``, the fallback) serves every block above its mmap threshold
with a fresh ``mmap`` and unmaps it on free; the threshold adapts upward but never past
32 MiB. A step's activations are often just above that (4096 tokens x 2048 MLP features in
fp32 = 33.5 MB), so each step page-faults them in again, 4 KiB at a time, and the kernel
zeroes every page. :data:`WORKER_MALLOC_TUNABLES` raises the threshold to 64 MiB and stops
trimming the heap, so those blocks are reused from the heap step after step, while larger ones
(a chunk of logits, a 50k-row weight gradient) are still mapped and unmapped. Measured on the
19M bench shape (2 cores, one process, 2 warm-up + 3 steps, 4 runs): minor page faults 1.85M
-> 1.19M, system CPU time 6.3 s -> 4.1 s, wall time 57 s -> 53 s, peak resident size +2-3%.

Which one (``deepy.py`` adds :func:`allocator_env`'s variables to its workers' environment):

- ``MEGATRON_ALLOCATOR=auto`` (the default) takes jemalloc when :func:`find_jemalloc` finds
  it, else glibc; ``jemalloc`` insists (an error when none is found); ``glibc`` keeps glibc.
- jemalloc is looked for at ``$MEGATRON_JEMALLOC``, then at ``<sys.prefix>/lib/`` (where
  ``make setup`` puts Debian's ``libjemalloc2``: ``tools/fetch_jemalloc.py``), then among the
  system's libraries (``ldconfig``; the Docker image installs it).
- A user's own ``LD_PRELOAD`` is left alone (no jemalloc added), as are their
  ``MALLOC_CONF`` and ``GLIBC_TUNABLES`` (an empty value keeps glibc's defaults).
"""

from __future__ import annotations

import ctypes.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from megatron.launch.errors import LaunchError

GLIBC_TUNABLES = "GLIBC_TUNABLES"
LD_PRELOAD = "LD_PRELOAD"
MALLOC_CONF = "MALLOC_CONF"
CHOICE = "MEGATRON_ALLOCATOR"
JEMALLOC_PATH = "MEGATRON_JEMALLOC"
JEMALLOC_SONAME = "libjemalloc.so.2"

MMAP_THRESHOLD_BYTES = 64 * 2**20
TRIM_THRESHOLD_BYTES = 2**34
WORKER_MALLOC_TUNABLES = ":".join((
    f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD_BYTES}",
    f"glibc.malloc.trim_threshold={TRIM_THRESHOLD_BYTES}",
))
"""Blocks up to 64 MiB from the heap; the heap's free top is kept (trimmed above 16 GiB)."""

JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
"""Freed pages stay with the process for the next step instead of going back to the kernel."""

Env = dict[str, str]
Finder = Callable[[Mapping[str, str]], "str | None"]
"""Finds a jemalloc library for an environment (:func:`find_jemalloc`)."""


@dataclass(frozen=True)
class AllocatorChoice:
    """The workers' allocator, why it was chosen, and the variables that select it."""

    name: str
    why: str
    env: Env = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the launch log."""
        return f"{self.name} ({self.why})"


def bundled_jemalloc() -> Path:
    """Where ``make setup`` (``tools/fetch_jemalloc.py``) puts jemalloc: beside this Python."""
    return Path(sys.prefix) / "lib" / JEMALLOC_SONAME


def find_jemalloc(environ: Mapping[str, str]) -> str | None:
    """A jemalloc library for ``LD_PRELOAD`` (a path, or a name the loader resolves), or None.

    Raises:
        LaunchError: when ``$MEGATRON_JEMALLOC`` names no file.
    """
    given = environ.get(JEMALLOC_PATH)
    if given:
        if not Path(given).is_file():
            raise LaunchError(f"{JEMALLOC_PATH}={given!r}: no such file (expected the path "
                              f"of a jemalloc shared library such as {JEMALLOC_SONAME})")
        return given
    bundled = bundled_jemalloc()
    if bundled.is_file():
        return str(bundled)
    return ctypes.util.find_library("jemalloc")


def _tunables(environ: Mapping[str, str]) -> Env:
    """glibc's settings, unless the user chose their own (an empty value included)."""
    return {} if GLIBC_TUNABLES in environ else {GLIBC_TUNABLES: WORKER_MALLOC_TUNABLES}


def _glibc(environ: Mapping[str, str], why: str) -> AllocatorChoice:
    return AllocatorChoice("glibc", why, _tunables(environ))


def _jemalloc(environ: Mapping[str, str], library: str) -> AllocatorChoice:
    env = {LD_PRELOAD: library}
    if MALLOC_CONF not in environ:
        env[MALLOC_CONF] = JEMALLOC_CONF
    return AllocatorChoice("jemalloc", library, env)


def _choose_jemalloc(environ: Mapping[str, str], find: Finder,
                     required: bool) -> AllocatorChoice:
    if LD_PRELOAD in environ:
        if required:
            raise LaunchError(f"{CHOICE}=jemalloc, but {LD_PRELOAD} is set already "
                              f"({environ[LD_PRELOAD]!r}): unset one of them")
        # Theirs may be an allocator too; glibc's tunables only act where glibc serves.
        return AllocatorChoice("as preloaded", f"{LD_PRELOAD}={environ[LD_PRELOAD]}",
                               _tunables(environ))
    library = find(environ)
    if library is not None:
        return _jemalloc(environ, library)
    if required:
        raise LaunchError(f"{CHOICE}=jemalloc, but no jemalloc was found: run "
                          f"tools/fetch_jemalloc.py, install libjemalloc2, or set "
                          f"{JEMALLOC_PATH} to the library's path")
    return _glibc(environ, "no jemalloc found")


ALLOCATORS: dict[str, Callable[[Mapping[str, str], Finder], AllocatorChoice]] = {
    "auto": lambda environ, find: _choose_jemalloc(environ, find, required=False),
    "jemalloc": lambda environ, find: _choose_jemalloc(environ, find, required=True),
    "glibc": lambda environ, find: _glibc(environ, f"{CHOICE}=glibc"),
}
"""``$MEGATRON_ALLOCATOR`` -> how the workers' allocator is chosen."""


def choose_allocator(environ: Mapping[str, str],
                     find: Finder = find_jemalloc) -> AllocatorChoice:
    """The workers' allocator for the launching ``environ``.

    Raises:
        LaunchError: for an unknown ``$MEGATRON_ALLOCATOR``, or ``jemalloc`` that cannot be had.
    """
    name = environ.get(CHOICE) or "auto"
    if name not in ALLOCATORS:
        raise LaunchError(f"{CHOICE}={name!r}: expected one of {sorted(ALLOCATORS)}")
    return ALLOCATORS[name](environ, find)


def allocator_env(environ: Mapping[str, str], find: Finder = find_jemalloc) -> Env:
    """The variables to add to ``environ`` for the workers (see :func:`choose_allocator`)."""
    return choose_allocator(environ, find).env
