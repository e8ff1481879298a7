"""Helpers for end-to-end runs: a tiny config and a real `./deepy.py` launch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

# One config, five layouts; the global batch (8 samples) is the same in all of them.
LAYOUTS = {
    "single": {"num_gpus": 1},
    # ZeRO on one process: its reduce step also fills the optimizer's gradient partitions.
    "zero1": {"num_gpus": 1, "zero_optimization": {"stage": 1}},
    "tp2": {"num_gpus": 2, "model_parallel_size": 2},
    "pp2": {"num_gpus": 2, "pipe_parallel_size": 2},
    # Stage 0: shared-memory gradient averaging and the sharded optimizer step.
    "dp2": {"num_gpus": 2},
    "dp2_zero1": {"num_gpus": 2, "zero_optimization": {"stage": 1}},
    "dp2_zero3": {"num_gpus": 2, "zero_optimization": {"stage": 3}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(data_prefix: str, workdir: Path, **overrides: object) -> dict:
    """A 2-layer model that trains in seconds; dropout off so layouts compare exactly."""
    config = {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "seq_length": 64,
        "max_position_embeddings": 64,
        "pos_emb": "rotary",
        "norm": "layernorm",
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "train_micro_batch_size_per_gpu": 4,
        "train_batch_size": 8,
        "train_iters": 20,
        "optimizer": {
            "type": "Adam",
            "params": {"lr": 3.0e-3, "betas": [0.9, 0.95], "eps": 1.0e-8},
        },
        "min_lr": 3.0e-4,
        "lr_decay_style": "cosine",
        "warmup": 0.1,
        "weight_decay": 0.0,
        "gradient_clipping": 1.0,
        "precision": "fp32",
        "data_path": data_prefix,
        "split": "90,10,0",
        "tokenizer_type": "CharLevelTokenizer",
        "save": str(workdir / "checkpoints"),
        "load": str(workdir / "checkpoints"),
        "checkpoint_factor": 10,
        "checkpoint_validation_with_forward_pass": True,
        "log_dir": str(workdir / "logs"),
        "log_interval": 1,
        "eval_interval": 10,
        "eval_iters": 2,
        "seed": 1234,
        "num_gpus": 1,
        "model_parallel_size": 1,
        "pipe_parallel_size": 0,
        "master_port": free_port(),
    }
    config.update(overrides)
    return config


def _deepy_command(
    config: dict, workdir: Path, script: str, extra: Sequence[str] = ()
) -> tuple[list[str], dict]:
    """Write `workdir/config.yml`; the command line (plus `extra` arguments, e.g. `-i F`)
    and the environment that launch it."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO)
    return [sys.executable, str(REPO / "deepy.py"), script, str(path), *extra], env


def run_deepy(
    config: dict,
    workdir: Path,
    script: str = "train.py",
    timeout: int = 300,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """Launch `./deepy.py SCRIPT config.yml [EXTRA...]` for real, as a user would."""
    argv, env = _deepy_command(config, workdir, script, extra)
    return subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_metrics(workdir: Path) -> list[dict]:
    path = workdir / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(workdir: Path) -> dict[int, float]:
    return {m["iteration"]: m["lm_loss"] for m in read_metrics(workdir) if "lm_loss" in m}


def start_deepy(config: dict, workdir: Path) -> subprocess.Popen:
    """Start `./deepy.py train.py` in its own session (so the test can kill the whole tree)."""
    argv, env = _deepy_command(config, workdir, "train.py")
    log = (workdir / "deepy.log").open("w")
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
