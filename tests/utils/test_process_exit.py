"""exit_after_cleanup: Python's exit clean-up runs, the interpreter's teardown does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each clean-up step leaves a marker file; `Teardown.__del__` runs only when the interpreter
# tears its modules down, which is the phase exit_after_cleanup skips.
SCRIPT = """
import atexit, sys, threading, time, weakref
from pathlib import Path
from megatron.utils.process_exit import exit_after_cleanup

folder, how = Path(sys.argv[1]), sys.argv[2]
mark = lambda name: (folder / name).write_text("ran")
atexit.register(mark, "atexit")
threading.Thread(target=lambda: (time.sleep(0.3), mark("thread"))).start()  # non-daemon

class Owner:
    pass

owner = Owner()
weakref.finalize(owner, mark, "finalize")

class Teardown:
    def __del__(self):
        mark("teardown")

keep = Teardown()
sys.stdout.write("no newline, never flushed")  # a pipe: block-buffered
if how == "helper":
    exit_after_cleanup(7)
raise SystemExit(7)
"""


def _run(tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), how], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("how", ["helper", "python"])
def test_cleanup_runs_and_teardown_is_skipped(tmp_path: Path, how: str) -> None:
    proc = _run(tmp_path, how)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "no newline, never flushed"
    ran = {p.name for p in tmp_path.iterdir()}
    assert {"atexit", "thread", "finalize"} <= ran
    # The control (Python's own exit) shows the script can tell the two apart.
    assert ("teardown" in ran) == (how == "python")


def test_none_exits_zero(tmp_path: Path) -> None:
    code = "from megatron.utils.process_exit import exit_after_cleanup; exit_after_cleanup(None)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
