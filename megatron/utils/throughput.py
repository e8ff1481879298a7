"""Throughput arithmetic (TFLOP/s, MFU) and a short GEMM probe for a device's peak FLOP/s.

Model FLOPs utilisation needs a peak to divide by. GPUs publish one; a CPU's depends on its
cores, vector units and BLAS build, so :func:`measure_peak_flops` times a square matmul for a
moment and caches the answer in a JSON file keyed by device, dtype, size and thread count.
``peak_theoretical_tflops`` in the config overrides the probe (see :func:`resolve_peak_flops`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from megatron.utils.gemm import upcast_dtype
from megatron.utils.logging import get_logger

log = get_logger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/neox-trainer").expanduser()
CACHE_FILE = "peak_flops.json"


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def tflops(flops_per_iteration: float, seconds: float, num_processes: int = 1) -> float:
    """Achieved TFLOP/s per process: ``flops / (seconds * processes) / 1e12``.

    Args:
        flops_per_iteration: model FLOPs of one optimizer step over the global batch.
        seconds: wall time of that step.
        num_processes: processes sharing the work (the world size).
    """
    _check_positive(seconds=seconds, num_processes=num_processes)
    return flops_per_iteration / (seconds * num_processes) / 1e12


def mfu(
    flops_per_iteration: float, seconds: float, num_processes: int, peak_flops_per_process: float
) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s per process over the peak FLOP/s.

    Args:
        flops_per_iteration: model FLOPs of one optimizer step over the global batch.
        seconds: wall time of that step.
        num_processes: processes sharing the work.
        peak_flops_per_process: peak FLOP/s of one process's device (FLOP/s, not TFLOP/s).
    """
    _check_positive(
        seconds=seconds, num_processes=num_processes, peak_flops_per_process=peak_flops_per_process
    )
    return flops_per_iteration / (seconds * num_processes * peak_flops_per_process)


def _cache_key(dtype: torch.dtype, size: int, device: str) -> str:
    """Everything that changes a measured peak: device, dtype, GEMM size, threads, machine."""
    threads = torch.get_num_threads()
    return f"{platform.node()}|{device}|{dtype}|{size}|threads={threads}|torch={torch.__version__}"


def _time_gemm(dtype: torch.dtype, size: int, seconds: float, device: str,
               windows: int = 10) -> float:
    """FLOP/s of repeated ``size x size`` matmuls over about ``seconds`` after one warm-up:
    the best of ``windows`` equal windows. On a shared machine a neighbour's burst slows part
    of the probe (one 2 s average on a 2-core AMX host read 278 GFLOP/s bf16 where the best
    window reached 1.1 TFLOP/s, and training then showed 130% MFU); the best window is the
    nearest reading of what the cores can do."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: first call pays for allocation and kernel selection
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while True:
            torch.matmul(a, b)
            count += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / windows:
                break
        best = max(best, 2.0 * size**3 * count / elapsed)
    return best


def _read_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def peak_probe(device: str | torch.device) -> dict[str, Any]:
    """``measure_peak_flops`` keywords for training on ``device``: the probe runs there (a
    GPU's peak, not its host's), with 8192-cubed products on a GPU, which needs a large
    product to reach its peak; the default 1024 already does on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"device": str(device), "size": 8192}
    return {"device": "cpu"}


def measure_peak_flops(
    dtype: torch.dtype = torch.float32,
    size: int = 1024,
    seconds: float = 1.0,
    *,
    device: str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> float:
    """Peak FLOP/s of one GEMM on ``device``: the best of this probe and earlier ones.

    A probe taken while the machine is busy reads low, and a cache that kept the first
    reading would then report MFU above 100% for ever after. So every call probes (about
    ``seconds``) and the cache keeps the highest value seen on this machine, which is the
    nearest we can measure to its real limit.

    Args:
        dtype: the training dtype (bf16 and fp32 peaks differ a lot on most hardware); bf16
            where the CPU has no bf16 GEMM probes fp32, the units that do the work.
        size: side of the square matrices.
        seconds: how long to time the probe.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        cache_dir: where ``peak_flops.json`` lives; default ``~/.cache/neox-trainer``.

    Returns:
        FLOP/s (not TFLOP/s).
    """
    _check_positive(size=size, seconds=seconds)
    # bf16 on a CPU without bf16 GEMMs runs on the fp32 units (megatron.utils.gemm): that is
    # the peak its matmuls can reach, not torch's slow bf16 fallback.
    dtype = upcast_dtype(dtype, torch.device(device)) or dtype
    path = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    path = path / CACHE_FILE
    key = _cache_key(dtype, size, device)
    cache = _read_cache(path)
    measured = _time_gemm(dtype, size, seconds, device)
    peak = max(measured, float(cache.get(key, 0.0)))
    log.info("GEMM peak %.3f TFLOP/s (this probe %.3f; %s; best kept in %s)",
             peak / 1e12, measured / 1e12, key, path)
    cache[key] = peak
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic, so concurrent ranks never read half a file
    except OSError as err:
        log.warning("could not cache the peak FLOP/s in %s: %s", path, err)
    return peak


def resolve_peak_flops(
    peak_theoretical_tflops: float | None,
    dtype: torch.dtype = torch.float32,
    **probe_kwargs: object,
) -> float:
    """The peak FLOP/s for MFU: the configured ``peak_theoretical_tflops`` if set, else a probe."""
    if peak_theoretical_tflops is not None:
        _check_positive(peak_theoretical_tflops=peak_theoretical_tflops)
        return float(peak_theoretical_tflops) * 1e12
    return measure_peak_flops(dtype, **probe_kwargs)  # type: ignore[arg-type]
