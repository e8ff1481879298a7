"""Real processes: DeepSpeed's runner started from runner_argv, and an srun-like start.

Both check that every rank rendezvouses from the variables its launcher provides and that an
all-reduce over gloo sees all ranks (1 + 2 = 3).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron.launch import runner_argv

REPO = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("rank_worker.py"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _results(out: Path) -> list[str]:
    return [p.read_text() for p in sorted(out.glob("rank*.txt"))]


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_deepspeed_runner_local_launch(tmp_path: Path) -> None:
    keys = SimpleNamespace(num_gpus=2, master_port=_free_port())
    argv = runner_argv(keys, WORKER, [str(tmp_path)], environ={})
    code = "import sys; from deepspeed.launcher.runner import main; main(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=tmp_path,
        env={**_env(), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _results(tmp_path) == ["0 0 2 3\n", "1 1 2 3\n"]


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_srun_style_ranks_rendezvous(tmp_path: Path) -> None:
    port = str(_free_port())
    procs = []
    for rank in range(2):
        slurm = {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2"}
        env = {**_env(), **slurm, "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, WORKER, str(tmp_path)], env=env))
    codes = [p.wait(timeout=100) for p in procs]
    assert codes == [0, 0]
    assert _results(tmp_path) == ["0 0 2 3\n", "1 1 2 3\n"]
