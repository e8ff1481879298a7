"""Run a Python script in a fresh interpreter and check that it exits cleanly.

For the threads that outlive a run (heartbeat, batch prefetch): one still inside a C++ call
when the interpreter shuts down aborts the process after the work finished well.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def assert_exits_cleanly(script: str, attempts: int, marker: str = "main thread done") -> None:
    """Run ``script`` ``attempts`` times from the repository root; each run must print
    ``marker``, exit 0 and never reach C++'s ``terminate``."""
    for attempt in range(attempts):
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert marker in done.stdout
        assert done.returncode == 0, (attempt, done.returncode, done.stderr[-2000:])
        assert "terminate called" not in done.stderr
