"""log_dir tee: what a rank prints reaches both the console and its own files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from megatron.utils.tee import tee_output
out, err = tee_output(sys.argv[1], 3)
print("hello stdout")
print("hello stderr", file=sys.stderr)
"""


def test_tee_writes_console_and_files(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == "hello stdout\n"
    assert proc.stderr == "hello stderr\n"
    (out,) = tmp_path.glob("*_rank3_stdout.txt")
    (err,) = tmp_path.glob("*_rank3_stderr.txt")
    assert out.read_text() == "hello stdout\n"
    assert err.read_text() == "hello stderr\n"
