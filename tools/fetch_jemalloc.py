"""Put jemalloc beside this Python (``<sys.prefix>/lib``) for ``deepy.py``'s workers.

Why: the workers need less memory with jemalloc than with glibc's malloc (less is lost to
fragmentation; ``megatron/launch/allocator.py``), and PyPI has no jemalloc wheel. On Debian and
Ubuntu, ``apt-get download libjemalloc2`` fetches the package without root and without
installing anything; ``dpkg-deb -x`` unpacks it, and its ``libjemalloc.so.2`` is copied to
where ``megatron.launch.allocator.find_jemalloc`` looks.

Nothing is done when the system already has jemalloc (``ldconfig`` finds it) or the copy is
there. When it cannot be had (no ``apt-get``, no package lists, no network) it says so and
exits 0: the workers then keep glibc's malloc with tuned settings, as before.

Usage: ``python tools/fetch_jemalloc.py`` (``make setup`` runs it).
"""

from __future__ import annotations

import ctypes.util
import shutil
import subprocess
import tempfile
from pathlib import Path

from megatron.launch.allocator import JEMALLOC_SONAME, bundled_jemalloc

PACKAGE = "libjemalloc2"


def unpack(workdir: Path) -> Path:
    """Download and unpack the package in ``workdir``; the library's path inside it.

    Raises:
        OSError, subprocess.CalledProcessError: when a step fails.
        FileNotFoundError: when the package holds no ``libjemalloc.so.2``.
    """
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True,
                   capture_output=True, text=True, timeout=300)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise FileNotFoundError(f"apt-get download left no {PACKAGE}_*.deb in {workdir}")
    tree = workdir / "tree"
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tree)], check=True,
                   capture_output=True, text=True, timeout=300)
    found = sorted(tree.rglob(JEMALLOC_SONAME))
    if not found:
        raise FileNotFoundError(f"{debs[-1].name} holds no {JEMALLOC_SONAME}")
    return found[0]


def main() -> int:
    target = bundled_jemalloc()
    if target.is_file():
        print(f"fetch_jemalloc: {target} is there already")
        return 0
    system = ctypes.util.find_library("jemalloc")
    if system:
        print(f"fetch_jemalloc: the system has jemalloc ({system}); nothing to fetch")
        return 0
    with tempfile.TemporaryDirectory(prefix="fetch_jemalloc_") as tmp:
        try:
            library = unpack(Path(tmp))
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", None) or err
            print(f"fetch_jemalloc: no jemalloc ({detail}); the workers keep glibc's malloc")
            return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(library.resolve(), partial)
        partial.replace(target)
    print(f"fetch_jemalloc: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
