"""Copy a process's stdout and stderr into files under `log_dir`, as GPT-NeoX's log_dir does.

Each rank writes its own pair of files, so a crash on rank 5 of 64 can be read after the
fact without scrolling through the launcher's interleaved console.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import IO, Any


class _Tee:
    """A text stream that writes to the original stream and to a file."""

    def __init__(self, stream: IO[str], file: IO[str]) -> None:
        self._stream = stream
        self._file = file

    def write(self, text: str) -> int:
        self._file.write(text)
        self._file.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        self._file.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def tee_output(log_dir: str | Path, rank: int) -> tuple[Path, Path]:
    """Tee sys.stdout/sys.stderr to `{log_dir}/{host}_rank{rank}_{stdout,stderr}.txt`."""
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{socket.gethostname()}_rank{rank}"
    paths = folder / f"{stem}_stdout.txt", folder / f"{stem}_stderr.txt"
    sys.stdout = _Tee(sys.stdout, paths[0].open("a", encoding="utf-8"))  # type: ignore[assignment]
    sys.stderr = _Tee(sys.stderr, paths[1].open("a", encoding="utf-8"))  # type: ignore[assignment]
    return paths
