"""TFLOP/s and MFU arithmetic against hand-computed numbers; the cached GEMM probe."""

import json
from pathlib import Path

import pytest
import torch

from megatron.utils import throughput
from megatron.utils.throughput import (
    measure_peak_flops,
    mfu,
    peak_probe,
    resolve_peak_flops,
    tflops,
)


def test_tflops_and_mfu_hand_computed() -> None:
    # 1.2e16 FLOPs per iteration over 8 processes in 10 s: 1.2e16 / 80 = 1.5e14 FLOP/s
    # per process = 150 TFLOP/s; against a 312 TFLOP/s peak that is 150 / 312 = 0.480769.
    assert tflops(1.2e16, 10.0, 8) == pytest.approx(150.0)
    assert mfu(1.2e16, 10.0, 8, 312e12) == pytest.approx(0.480769, rel=1e-6)
    assert mfu(3e12, 2.0, 1, 3e12) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [{"seconds": 0.0}, {"num_processes": 0}])
def test_non_positive_inputs_are_rejected(bad: dict) -> None:
    kwargs = {"flops_per_iteration": 1.0, "seconds": 1.0, "num_processes": 1, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        tflops(**kwargs)


def test_probe_keeps_the_best_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    peak = measure_peak_flops(torch.float32, size=64, seconds=0.02, cache_dir=tmp_path)
    assert peak > 1e6  # even a slow CPU does more than a MFLOP/s on a 64x64 GEMM
    cached = json.loads((tmp_path / "peak_flops.json").read_text())
    assert list(cached.values()) == [peak]

    # A busy machine reads low: the earlier, higher peak stands.
    monkeypatch.setattr(throughput, "_time_gemm", lambda *args: peak / 10)
    assert measure_peak_flops(torch.float32, size=64, seconds=0.02, cache_dir=tmp_path) == peak
    # A quieter machine reads higher: that becomes the peak.
    monkeypatch.setattr(throughput, "_time_gemm", lambda *args: peak * 3)
    assert measure_peak_flops(torch.float32, size=64, seconds=0.02, cache_dir=tmp_path) == peak * 3
    assert list(json.loads((tmp_path / "peak_flops.json").read_text()).values()) == [peak * 3]


def test_probe_counts_two_flops_per_multiply_add(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake clock: 1 start + 1 read per GEMM in each window.
    clock = iter([0.0, 0.5, 1.0, 1.5])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    # Three timed GEMMs of 2 * 10^3 FLOPs in 1.5 s = 4000 FLOP/s.
    assert throughput._time_gemm(torch.float32, 10, 1.5, "cpu", windows=1) == pytest.approx(4000.0)


def test_probe_reports_its_best_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A neighbour's burst slows one window; the other shows what the cores can do."""
    # Window 1 (0.5 s each): two GEMMs in 0.5 s; window 2: one GEMM in 1.0 s (slowed).
    clock = iter([0.0, 0.25, 0.5, 0.5, 1.5])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    got = throughput._time_gemm(torch.float32, 10, 1.0, "cpu", windows=2)
    assert got == pytest.approx(2 * 2 * 10**3 / 0.5)


def test_configured_peak_overrides_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throughput, "measure_peak_flops", lambda *a, **k: pytest.fail("probed"))
    assert resolve_peak_flops(312.0) == pytest.approx(312e12)


def test_bf16_peak_is_the_fp32_units_where_the_cpu_has_no_bf16(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron.utils import gemm

    probed = []
    monkeypatch.setattr(throughput, "_time_gemm", lambda dtype, *rest: probed.append(dtype) or 1e9)
    monkeypatch.setattr(gemm, "_cpu_has_bf16_gemm", lambda: False)
    throughput.measure_peak_flops(torch.bfloat16, cache_dir=tmp_path)
    monkeypatch.setattr(gemm, "_cpu_has_bf16_gemm", lambda: True)
    throughput.measure_peak_flops(torch.bfloat16, cache_dir=tmp_path)
    assert probed == [torch.float32, torch.bfloat16]


def test_peak_probe_runs_on_the_training_device_with_a_gpu_sized_product() -> None:
    assert peak_probe("cpu") == {"device": "cpu"}
    assert peak_probe(torch.device("cuda", 1)) == {"device": "cuda:1", "size": 8192}
