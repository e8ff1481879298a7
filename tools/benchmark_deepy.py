"""The ``--path deepy`` side of tools/benchmark.py: our trainer measured as a user runs it.

For each measurement the benchmark writes, in a fresh temporary folder, a random-token Megatron
corpus (``.bin/.idx``, our own writer) and one config (``configs/bench/<name>.yml`` with the
run keys below applied), launches ``./deepy.py train.py <that config>`` for real, and reads
``<log_dir>/metrics.jsonl`` back. The config is one merged file rather than the bench file
stacked with an overrides file, because stacked files may not set the same key twice and the
run must change keys the bench file sets (``train_iters``, the micro batch).

With ``processes`` > 1 the run is data parallel with the SAME global batch: the micro batch is
divided by the process count (or, when it does not divide, the gradient accumulation steps
are), so every step trains on the same number of tokens.

Threads: each worker gets ``OMP_NUM_THREADS`` from the environment of deepy; DeepSpeed's
launcher passes the environment through and only sets ``OMP_NUM_THREADS`` itself with
``--bind_cores_to_rank``, which deepy never passes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 50257  # GPT-2's; ids are drawn below it, the model pads its table to 50304
DOC_TOKENS = 2048
POLL_S = 0.1


def split_batch(micro: int, accumulation: int, processes: int) -> tuple[int, int]:
    """``(micro, accumulation)`` per process that keep ``micro * accumulation`` per step.

    Raises:
        ValueError: when neither the micro batch nor the accumulation steps divide.
    """
    if micro % processes == 0:
        return micro // processes, accumulation
    if accumulation % processes == 0:
        return micro, accumulation // processes
    raise ValueError(
        f"cannot split a global batch of micro {micro} x accumulation {accumulation} over "
        f"{processes} processes; use a micro batch or accumulation divisible by {processes}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(
    bench: Mapping[str, Any],
    *,
    processes: int,
    precision: str,
    iterations: int,
    data_prefix: str,
    workdir: Path,
    port: int,
) -> dict[str, Any]:
    """The bench config with the run keys applied: data, batch split, length, logging.

    No checkpoint is saved or loaded and there is no evaluation: the run only trains
    ``iterations`` steps and logs every one of them.
    """
    micro, accumulation = split_batch(bench["train_micro_batch_size_per_gpu"],
                                      bench.get("gradient_accumulation_steps", 1), processes)
    config = {key: value for key, value in bench.items()
              if key not in ("train_batch_size", "save", "load")}
    config.update({
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "num_gpus": processes,
        "master_port": port,
        "precision": precision,
        "train_iters": iterations,
        "data_path": data_prefix,
        "split": "100,0,0",
        "eval_interval": iterations,
        "eval_iters": 0,
        "log_dir": str(workdir / "logs"),
        "log_interval": 1,
        "use_wandb": False,
    })
    return config


def write_random_corpus(prefix: Path, tokens: int, seed: int = 0) -> str:
    """Documents of uniform random ids below 50257 holding at least ``tokens`` tokens."""
    import numpy as np

    from megatron.data.indexed_dataset import make_builder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    builder = make_builder(f"{prefix}.bin", vocab_size=VOCAB)
    for _ in range(tokens // DOC_TOKENS + 2):
        builder.add_item(rng.integers(0, VOCAB, DOC_TOKENS, dtype=np.int64))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def write_run(bench_path: Path, workdir: Path, *, processes: int, precision: str,
              iterations: int, overrides: Mapping[str, Any] | None = None) -> Path:
    """Corpus and config for one launch under ``workdir``; returns the config's path.

    ``overrides`` replace keys of the bench file (tools/benchmark.py's ``--set``).
    """
    bench = {**yaml.safe_load(bench_path.read_text()), **(overrides or {})}
    micro, accumulation = bench["train_micro_batch_size_per_gpu"], bench.get(
        "gradient_accumulation_steps", 1)
    tokens = (iterations * micro * accumulation + 1) * (bench["seq_length"] + 1)
    prefix = write_random_corpus(workdir / "data" / "random_text_document", tokens)
    config = run_config(bench, processes=processes, precision=precision, iterations=iterations,
                        data_prefix=prefix, workdir=workdir, port=free_port())
    path = workdir / f"{bench_path.stem}-{processes}p.yml"
    header = f"# {bench_path.name} as tools/benchmark.py --path deepy runs it\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def launch_env(threads: int) -> dict[str, str]:
    """The environment of deepy (and so of every worker): ``threads`` torch threads each."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a metrics.jsonl (a line being written is left out)."""
    if not path.is_file():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def log_tail(text: str, lines: int = 150, width: int = 300) -> str:
    """The last ``lines`` lines of a launch log, each cut to ``width`` characters: the
    launcher echoes its whole command line (base64 configs, tens of kB), which would
    otherwise push the worker's traceback out of the message."""
    kept = [ln if len(ln) <= width else ln[:width] + " [...]" for ln in text.splitlines()]
    return "\n".join(kept[-lines:])


def ran_to_the_end(records: list[dict[str, Any]], iterations: int | None) -> bool:
    """Whether the records hold the run's last iteration (timed, so the step finished)."""
    return iterations is not None and any(
        r.get("iteration") == iterations and r.get("iteration_time") is not None
        for r in records)


def launch(config: Path, workdir: Path, threads: int, timeout: float = 3600.0,
           iterations: int | None = None) -> tuple[list[dict[str, Any]], float | None]:
    """Run ``./deepy.py train.py config``; returns its metrics records and the setup seconds.

    A launch that fails is an error, unless it logged all ``iterations`` first: a process
    that aborts while exiting has measured every step, so the figures stand and the exit is
    reported on stderr, log tail included, rather than losing the whole benchmark.

    Setup is the wall time from starting deepy until the training loop started: the moment
    the first record appeared (polled every 0.1 s) minus that record's ``elapsed_seconds``
    (the loop's own clock). It covers the launcher, imports, engine build and index maps.
    """
    metrics = workdir / "logs" / "metrics.jsonl"
    log = workdir / "deepy.log"
    start, first_seen = time.perf_counter(), None
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "deepy.py"), "train.py", str(config)], cwd=ROOT,
            env=launch_env(threads), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group, so a timeout stops the workers too
        while proc.poll() is None and time.perf_counter() - start < timeout:
            if first_seen is None and read_records(metrics):
                first_seen = time.perf_counter() - start
            time.sleep(POLL_S)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    records = read_records(metrics)
    if proc.returncode != 0:
        message = (f"{config.name}: deepy exited with {proc.returncode}:\n"
                   f"{log_tail(log.read_text())}")
        if not ran_to_the_end(records, iterations):
            raise RuntimeError(message)
        print(f"warning: every step was logged, then {message}", file=sys.stderr, flush=True)
    elapsed = records[0].get("elapsed_seconds") if records else None
    setup = first_seen - elapsed if first_seen is not None and elapsed is not None else None
    return records, setup


def measurement(side: str, records: list[dict[str, Any]], warmup: int,
                setup_s: float | None) -> dict[str, Any]:
    """The fields of tools/benchmark.py's Measurement from metrics.jsonl records (log_interval 1).

    Iterations up to ``warmup`` are left out. Data seconds are the logged data-wait fraction
    times the iteration time; peak RSS is the largest sum over ranks that was logged, and the
    per-process one the largest single rank's. There are no per-step CPU seconds (empty list).
    """
    steps = sorted((r for r in records if r.get("iteration_time") is not None),
                   key=lambda r: r["iteration"])
    timed = [r for r in steps if r["iteration"] > warmup]
    if not timed:
        raise ValueError(f"{side}: no iteration after the {warmup} warm-up ones was logged")
    return {"side": side, "step_s": [r["iteration_time"] for r in timed],
            "data_s": [r["data_wait_fraction"] * r["iteration_time"] for r in timed],
            "peak_rss_mb": max(r["peak_rss_mb_all_ranks"] for r in steps),
            "process_rss_mb": max(r["peak_rss_mb_max_rank"] for r in steps),
            "setup_s": setup_s, "cpu_s": [],
            "peak_gpu_mb": max((r["peak_gpu_mem_mb"] for r in steps if "peak_gpu_mem_mb" in r),
                               default=None)}


def measure(side: str, bench_path: Path, processes: int, precision: str, *, warmup: int,
            steps: int, threads: int,
            overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One launch of ``processes`` workers with ``threads // processes`` threads each."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{bench_path.stem}-{side}-") as tmp:
        workdir = Path(tmp)
        config = write_run(bench_path, workdir, processes=processes, precision=precision,
                           iterations=warmup + steps, overrides=overrides)
        records, setup = launch(config, workdir, max(threads // processes, 1),
                                iterations=warmup + steps)
    return measurement(side, records, warmup, setup)
