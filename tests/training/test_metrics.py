"""Metrics sinks: metrics.jsonl, TensorBoard and W&B files read back; console and arithmetic."""

import glob
import json
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from megatron.training.metrics import (
    LEARNING_RATE,
    LM_LOSS,
    VAL_LOSS,
    VAL_PPL,
    ConsoleSink,
    MetricsLogger,
    redact,
    throughput_metrics,
)

STEP1 = {LM_LOSS: torch.tensor(2.5), LEARNING_RATE: 1e-3, "train/grad_norm": 0.75,
         "runtime/tokens_per_sec": 1024.0, "runtime/mfu": 0.25, "train/consumed_samples": 8}
STEP2 = {LM_LOSS: 2.25, LEARNING_RATE: 2e-3, VAL_LOSS: 2.0, VAL_PPL: 7.389}


def _args(tmp_path: Path, **kw: object) -> SimpleNamespace:
    base = dict(train_iters=100, tensorboard_dir=None, use_wandb=False,
                log_dir=str(tmp_path / "logs"))
    return SimpleNamespace(**{**base, **kw})


def _log_two_steps(logger: MetricsLogger) -> None:
    logger.log(1, STEP1)
    logger.log(2, STEP2)
    logger.close()


def test_jsonl_lines_parse_and_hold_the_keys(tmp_path: Path) -> None:
    _log_two_steps(MetricsLogger.from_args(_args(tmp_path), rank=0))
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first == {"iteration": 1, "lm_loss": 2.5, "learning_rate": 1e-3, "grad_norm": 0.75,
                     "tokens_per_sec": 1024.0, "mfu": 0.25, "consumed_samples": 8.0}
    assert second["validation/lm_loss"] == 2.0
    assert second["validation/lm_loss_ppl"] == 7.389
    assert second["grad_norm"] is None and second["lm_loss"] == 2.25


def test_jsonl_merges_calls_for_the_same_iteration(tmp_path: Path) -> None:
    logger = MetricsLogger.from_args(_args(tmp_path), rank=0)
    logger.log(1, STEP1)
    logger.log(1, {VAL_LOSS: 3.0})
    logger.log(2, {LM_LOSS: 2.0})
    logger.log(2, {VAL_LOSS: 1.5, LM_LOSS: None})  # None entries never clobber values
    logger.close()
    lines = [json.loads(x) for x in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["iteration"], x["lm_loss"], x["validation/lm_loss"]) for x in lines] == [
        (1, 2.5, 3.0), (2, 2.0, 1.5)]
    assert lines[0]["grad_norm"] == 0.75


def test_jsonl_appends_on_resume_and_writes_non_finite_as_null(tmp_path: Path) -> None:
    _log_two_steps(MetricsLogger.from_args(_args(tmp_path), rank=0))
    logger = MetricsLogger.from_args(_args(tmp_path), rank=0)
    logger.log(3, {LM_LOSS: float("nan")})
    logger.close()
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3]
    assert json.loads(lines[2])["lm_loss"] is None


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    args = _args(tmp_path, tensorboard_dir=str(tmp_path / "tb"), use_wandb=True)
    logger = MetricsLogger.from_args(args, rank=1)
    _log_two_steps(logger)
    assert logger.sinks == []
    assert not (tmp_path / "logs").exists() and not (tmp_path / "tb").exists()


def test_tensorboard_events_hold_the_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = _args(tmp_path, tensorboard_dir=str(tmp_path / "tb"), log_dir=None)
    _log_two_steps(MetricsLogger.from_args(args, rank=0))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars(LM_LOSS)]
    assert loss == [(1, 2.5), (2, 2.25)]
    assert [(e.step, e.value) for e in acc.Scalars(VAL_LOSS)] == [(2, 2.0)]
    assert acc.Scalars(LEARNING_RATE)[1].value == pytest.approx(2e-3)


def _wandb_records(path: str) -> list:
    """Read a .wandb file: a 7-byte header, then 32 KiB blocks of (crc, len, type) records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, out = Path(path).read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # block trailer padding
            continue
        if pos + 7 + length > len(data):
            break  # a record still being written
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def _wandb_records_when_complete(path: str, timeout: float = 60.0) -> list:
    """The run's records once its "exit" record is on disk (wandb-core writes them async)."""
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {timeout} s")
        time.sleep(0.2)


@pytest.mark.distributed  # wandb starts its wandb-core service process
@pytest.mark.timeout(120)
def test_wandb_offline_run_holds_metrics_and_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, sub in (("WANDB_DIR", "wb"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = _args(tmp_path, use_wandb=True, log_dir=None, wandb_project="neox",
                 wandb_group="grp", wandb_run_name="run1", wandb_team=None)
    config = {"hidden_size": 64, "wandb_api_key": "SECRET123", "nested": {"token": "SECRET123"}}
    _log_two_steps(MetricsLogger.from_args(args, rank=0, all_config=config))
    (run_file,) = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = _wandb_records_when_complete(run_file)
    # Keys with a "/" are stored as nested_key parts.
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h[LM_LOSS]) for h in history] == [(1, 2.5), (2, 2.25)]
    assert history[1][VAL_LOSS] == 2.0
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, run.display_name) == ("neox", "grp", "run1")
    assert {i.key for i in run.config.update} >= {"hidden_size"}
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert b"SECRET123" not in file.read_bytes(), file


def test_console_line_is_compact_and_ordered() -> None:
    values = {"train/consumed_samples": 80, "train/consumed_tokens": 5120, LM_LOSS: 5.25,
              LEARNING_RATE: 1e-4, "train/grad_norm": 1.5, "train/skipped_iterations": 0,
              "runtime/iteration_time": 0.1234, "runtime/tokens_per_sec": 41493.0,
              "runtime/tflops_per_process": 0.0125, "runtime/mfu": 0.034,
              "runtime/elapsed_seconds": 62, "runtime/eta_seconds": 3600, "unknown": 1}
    line = ConsoleSink(train_iters=100).format(10, values)
    assert line == (
        "iteration 10/100 | consumed samples 80 | consumed tokens 5,120 | "
        "lm_loss 5.250000E+00 | lr 1.000E-04 | grad norm 1.5000 | skipped 0 | "
        "ms/iter 123.4 | tokens/s 41,493 | TFLOP/s/proc 0.013 | MFU 3.40% | "
        "elapsed 0:01:02 | ETA 1:00:00"
    )


def test_throughput_metrics_hand_computed() -> None:
    out = throughput_metrics(iteration=10, train_iters=110, iteration_time=0.5,
                             global_batch_size=8, seq_length=64, flops_per_iteration=1e12,
                             num_processes=2, peak_flops_per_process=4e12, elapsed=100.0)
    assert out == {
        "runtime/iteration_time": 0.5,
        "runtime/samples_per_sec": 16.0,
        "runtime/tokens_per_sec": 1024.0,
        "runtime/tflops_per_process": pytest.approx(1.0),  # 1e12 / (0.5 s * 2) / 1e12
        "runtime/flops_per_sec_per_gpu": pytest.approx(1e12),
        "runtime/mfu": pytest.approx(0.25),  # 1e12 FLOP/s over a 4e12 peak
        "runtime/elapsed_seconds": 100.0,
        "runtime/eta_seconds": 50.0,  # 100 iterations left at 0.5 s
    }


def test_data_wait_fraction_is_data_time_over_iteration_time() -> None:
    out = throughput_metrics(iteration=1, train_iters=2, iteration_time=0.5,
                             global_batch_size=8, seq_length=64, data_time=0.01)
    assert out["runtime/data_wait_fraction"] == pytest.approx(0.02)
    assert "runtime/data_wait_fraction" not in throughput_metrics(
        iteration=1, train_iters=2, iteration_time=0.5, global_batch_size=8, seq_length=64)
    line = ConsoleSink().format(1, {**out, "runtime/peak_rss_mb_all_ranks": 2345.6})
    assert line.endswith("| data wait 2.00% | peak RSS MiB (all ranks) 2,346")


def test_redact_drops_credentials_at_any_depth() -> None:
    cfg = {"lr": 1, "WANDB_API_KEY": "x", "hf_token": "y", "d": {"password": "z", "k": 2}}
    assert redact(cfg) == {"lr": 1, "d": {"k": 2}}
