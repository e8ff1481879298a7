"""Training metrics: one ``MetricsLogger.log(iteration, values)`` fanned out to sinks.

Sinks are the console (one compact line), TensorBoard, Weights & Biases and
``{log_dir}/metrics.jsonl``. Metric names follow GPT-NeoX's TensorBoard/W&B charts
(``train/lm_loss``, ``train/learning_rate``, ``validation/lm_loss``, ``runtime/...``,
``timers/<name>``), so dashboards built for GPT-NeoX runs keep working. Only rank 0 builds
sinks; on other ranks ``log`` does nothing, so callers need no rank checks.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from megatron.utils.logging import get_logger
from megatron.utils.throughput import mfu, tflops

log = get_logger(__name__)

# Metric names. GPT-NeoX's chart names where it has one; ours follow the same scheme.
LM_LOSS = "train/lm_loss"
LEARNING_RATE = "train/learning_rate"
GRAD_NORM = "train/grad_norm"
LOSS_SCALE = "train/loss_scale"
SKIPPED_ITERS = "train/skipped_iterations"
CONSUMED_SAMPLES = "train/consumed_samples"
CONSUMED_TOKENS = "train/consumed_tokens"
NOISE_SCALE = "train/noise_scale"
ITERATION_TIME = "runtime/iteration_time"  # seconds per iteration
SAMPLES_PER_SEC = "runtime/samples_per_sec"
TOKENS_PER_SEC = "runtime/tokens_per_sec"
FLOPS_PER_SEC_PER_GPU = "runtime/flops_per_sec_per_gpu"
TFLOPS_PER_PROCESS = "runtime/tflops_per_process"
MFU = "runtime/mfu"  # fraction in [0, 1]
DATA_WAIT_FRACTION = "runtime/data_wait_fraction"  # share of step time spent in next(data)
PEAK_RSS = "runtime/peak_rss_mb"  # this process's peak resident set size, MiB
PEAK_RSS_ALL_RANKS = "runtime/peak_rss_mb_all_ranks"  # the sum of PEAK_RSS over all ranks
PEAK_RSS_MAX_RANK = "runtime/peak_rss_mb_max_rank"  # the largest PEAK_RSS of any rank
PEAK_GPU_MEM = "runtime/peak_gpu_mem_mb"  # this rank's torch.cuda.max_memory_allocated, MiB
ELAPSED = "runtime/elapsed_seconds"
ETA = "runtime/eta_seconds"
VAL_LOSS = "validation/lm_loss"
VAL_PPL = "validation/lm_loss_ppl"

# metrics.jsonl always carries these keys (null when a call did not supply them).
JSONL_CORE = (
    "lm_loss", "learning_rate", "grad_norm", "tokens_per_sec", "mfu", "consumed_samples",
)
_SECRET = re.compile(r"api_?key|token|secret|password|credential", re.IGNORECASE)


def throughput_metrics(
    *,
    iteration: int,
    train_iters: int,
    iteration_time: float,
    global_batch_size: int,
    seq_length: int,
    flops_per_iteration: float | None = None,
    num_processes: int = 1,
    peak_flops_per_process: float | None = None,
    elapsed: float | None = None,
    data_time: float | None = None,
) -> dict[str, float]:
    """The ``runtime/*`` values for one log line, from raw timings and sizes.

    Args:
        iteration: iterations finished so far.
        train_iters: the run's total; used for the ETA.
        iteration_time: mean seconds per iteration over the log interval.
        global_batch_size: samples per iteration over all data-parallel ranks.
        seq_length: tokens per sample.
        flops_per_iteration: model FLOPs per iteration; enables TFLOP/s and MFU.
        num_processes: the world size (for per-process TFLOP/s).
        peak_flops_per_process: FLOP/s peak of one process's device; enables MFU.
        elapsed: seconds since training started; enables elapsed and ETA.
        data_time: mean seconds per iteration spent waiting for the next batch, over the
            same interval; enables the data-wait fraction.
    """
    out = {
        ITERATION_TIME: iteration_time,
        SAMPLES_PER_SEC: global_batch_size / iteration_time,
        TOKENS_PER_SEC: global_batch_size * seq_length / iteration_time,
    }
    if data_time is not None:
        out[DATA_WAIT_FRACTION] = data_time / iteration_time
    if flops_per_iteration is not None:
        per_process = tflops(flops_per_iteration, iteration_time, num_processes)
        out[TFLOPS_PER_PROCESS] = per_process
        out[FLOPS_PER_SEC_PER_GPU] = per_process * 1e12
        if peak_flops_per_process is not None:
            out[MFU] = mfu(flops_per_iteration, iteration_time, num_processes,
                           peak_flops_per_process)
    if elapsed is not None:
        out[ELAPSED] = elapsed
        out[ETA] = max(train_iters - iteration, 0) * iteration_time
    return out


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` without keys that look like credentials (at any depth)."""
    clean: dict[str, Any] = {}
    for key, value in config.items():
        if _SECRET.search(str(key)):
            continue
        clean[key] = redact(value) if isinstance(value, Mapping) else value
    return clean


class Sink(Protocol):
    """Where logged values go."""

    def write(self, iteration: int, values: Mapping[str, float]) -> None:
        """Record ``values`` for ``iteration``."""

    def close(self) -> None:
        """Flush and release resources."""


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


# Console fields in display order: metric name, label, formatter.
_CONSOLE_FIELDS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    (CONSUMED_SAMPLES, "consumed samples", lambda v: f"{int(v):,}"),
    (CONSUMED_TOKENS, "consumed tokens", lambda v: f"{int(v):,}"),
    (LM_LOSS, "lm_loss", lambda v: f"{v:.6E}"),
    (LEARNING_RATE, "lr", lambda v: f"{v:.3E}"),
    (GRAD_NORM, "grad norm", lambda v: f"{v:.4f}"),
    (LOSS_SCALE, "loss scale", lambda v: f"{v:.1f}"),
    (SKIPPED_ITERS, "skipped", lambda v: f"{int(v)}"),
    (ITERATION_TIME, "ms/iter", lambda v: f"{v * 1000:.1f}"),
    (TOKENS_PER_SEC, "tokens/s", lambda v: f"{v:,.0f}"),
    (TFLOPS_PER_PROCESS, "TFLOP/s/proc", lambda v: f"{v:.3f}"),
    (MFU, "MFU", lambda v: f"{v * 100:.2f}%"),
    (DATA_WAIT_FRACTION, "data wait", lambda v: f"{v * 100:.2f}%"),
    (PEAK_RSS_ALL_RANKS, "peak RSS MiB (all ranks)", lambda v: f"{v:,.0f}"),
    (PEAK_GPU_MEM, "peak GPU MiB", lambda v: f"{v:,.0f}"),
    (ELAPSED, "elapsed", _hms),
    (ETA, "ETA", _hms),
    (VAL_LOSS, "val lm_loss", lambda v: f"{v:.6E}"),
    (VAL_PPL, "val ppl", lambda v: f"{v:.3f}"),
)


class ConsoleSink:
    """One ``iteration N/T | name value | ...`` line per call, through ``logging``."""

    def __init__(self, train_iters: int | None = None) -> None:
        self.train_iters = train_iters

    def format(self, iteration: int, values: Mapping[str, float]) -> str:
        """The line for ``values``; unknown keys are left to the other sinks."""
        total = f"/{self.train_iters}" if self.train_iters else ""
        parts = [f"iteration {iteration}{total}"]
        parts += [f"{label} {fmt(values[key])}" for key, label, fmt in _CONSOLE_FIELDS
                  if values.get(key) is not None]
        return " | ".join(parts)

    def write(self, iteration: int, values: Mapping[str, float]) -> None:
        """Log the line at INFO."""
        log.info("%s", self.format(iteration, values))

    def close(self) -> None:
        """Nothing to release."""


class TensorBoardSink:
    """Scalars in TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, iteration: int, values: Mapping[str, float]) -> None:
        """One scalar per value, then flush so a crash loses nothing already logged."""
        for key, value in values.items():
            self.writer.add_scalar(key, value, iteration)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()


class WandbSink:
    """A Weights & Biases run (``WANDB_MODE=offline`` works); credentials never enter it.

    Args:
        project, group, name, team: W&B project, run group, run name, entity.
        host: server URL (``wandb_host``); None uses W&B's default.
        config: the run's full config; keys that look like secrets are dropped first.
        directory: where W&B writes its files (default: ``WANDB_DIR`` or the cwd).
    """

    def __init__(
        self,
        *,
        project: str | None,
        group: str | None = None,
        name: str | None = None,
        team: str | None = None,
        host: str | None = None,
        config: Mapping[str, Any] | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        import wandb

        settings = wandb.Settings(base_url=host) if host else None
        self.run = wandb.init(
            project=project, group=group, name=name, entity=team,
            config=redact(config or {}), dir=None if directory is None else str(directory),
            settings=settings, save_code=False,
        )

    def write(self, iteration: int, values: Mapping[str, float]) -> None:
        """Log all values at step ``iteration``."""
        self.run.log(dict(values), step=iteration)

    def close(self) -> None:
        """Finish the run (syncs it when online)."""
        self.run.finish()


def _jsonl_key(name: str) -> str:
    """``train/lm_loss`` -> ``lm_loss``; ``runtime/mfu`` -> ``mfu``; others keep their prefix."""
    for prefix in ("train/", "runtime/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


class JsonlSink:
    """``metrics.jsonl``: one JSON object per logged iteration, appended, for scripts and plots.

    A second call for the same iteration (say, validation after the training values) merges
    into that iteration's line: the line is rewritten in place rather than duplicated.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._last: dict[str, Any] | None = None
        self._last_offset = 0

    def write(self, iteration: int, values: Mapping[str, float]) -> None:
        """Append ``{"iteration": ..., core keys (null if absent), every other value}``."""
        fresh = {_jsonl_key(k): v if v is not None and math.isfinite(v) else None
                 for k, v in values.items()}
        if self._last is not None and self._last["iteration"] == iteration:
            record = {**self._last, **fresh}
            self._file.truncate(self._last_offset)  # drop the line we are replacing
        else:
            record = {"iteration": iteration, **{key: None for key in JSONL_CORE}, **fresh}
            self._last_offset = self._file.tell()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._last = record

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class MetricsLogger:
    """Fans ``log(iteration, values)`` out to every sink.

    Several calls for one iteration are fine: TensorBoard and W&B record each value at that
    step, and ``metrics.jsonl`` merges them into one object.
    """

    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or [])

    @classmethod
    def from_args(
        cls, args: Any, *, rank: int, all_config: Mapping[str, Any] | None = None
    ) -> MetricsLogger:
        """Sinks chosen by GPT-NeoX keys (duck-typed); ranks other than 0 get none.

        Console always; TensorBoard when ``tensorboard_dir`` is set; W&B when ``use_wandb``
        (``wandb_project``, ``wandb_group``, ``wandb_run_name``, ``wandb_team``,
        ``wandb_host``); ``{log_dir}/metrics.jsonl`` when ``log_dir`` is set.
        """
        if rank != 0:
            return cls([])
        sinks: list[Sink] = [ConsoleSink(getattr(args, "train_iters", None))]
        if getattr(args, "tensorboard_dir", None):
            sinks.append(TensorBoardSink(args.tensorboard_dir))
        if getattr(args, "use_wandb", False):
            sinks.append(WandbSink(
                project=getattr(args, "wandb_project", None),
                group=getattr(args, "wandb_group", None),
                name=getattr(args, "wandb_run_name", None),
                team=getattr(args, "wandb_team", None),
                host=getattr(args, "wandb_host", None),
                config=all_config,
                directory=os.environ.get("WANDB_DIR") or getattr(args, "log_dir", None),
            ))
        if getattr(args, "log_dir", None):
            sinks.append(JsonlSink(Path(args.log_dir) / "metrics.jsonl"))
        return cls(sinks)

    def log(self, iteration: int, values: Mapping[str, Any]) -> None:
        """Send ``values`` (tensors and numbers; None entries are dropped) to every sink."""
        if not self.sinks:
            return
        clean = {k: float(v.item() if hasattr(v, "item") else v)
                 for k, v in values.items() if v is not None}
        for sink in self.sinks:
            sink.write(iteration, clean)

    def close(self) -> None:
        """Close every sink; call once at the end of training."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []
