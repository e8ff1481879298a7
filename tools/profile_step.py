"""Where one training step's time goes: our step (or HuggingFace's) under torch.profiler.

    python tools/profile_step.py [--config 1-3B] [--precision bf16] [--side ours|hf]
                                 [--device auto|cpu|cuda] [--steps 3] [--set KEY=VALUE ...]

Builds one side exactly as tools/benchmark.py does (same configs, random tokens), warms up,
times 10 steps (2 on a CPU), then profiles ``--steps`` more and prints, per step: wall time,
the time the GPU spent in kernels (busy share, launches, host syncs), the time by family
(GEMM, attention, optimizer, copy/cast, norm, other elementwise), the top kernels and
host ops, and a table by model part (attention, MLP, LM head + loss, norm, embedding,
optimizer, other ops; forward and backward together, see tools/step_parts.py) with each
part's family split. On a CPU the families are summed over the host ops' own time instead.

It exists for the question the benchmark cannot answer: not how fast, but what to fix next.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python tools/profile_step.py`
    sys.path.insert(0, str(ROOT))

from tools import benchmark, step_parts  # noqa: E402

FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # order matters: the first family whose marker occurs in the lower-cased name wins
    ("attention", ("sdpa", "flash", "fmha", "attention", "aten::_softmax_backward_data")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "optimizer")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "aten::mm", "aten::addmm",
              "aten::bmm", "aten::matmul", "mkldnn_matmul")),
    ("norm", ("norm",)),
    ("copy/cast", ("copy", "aten::to", "_to_copy", "cat")),
)

OTHER_FAMILY = "elementwise/other"
"""The family of a name no marker matches."""


def kernel_family(name: str) -> str:
    """The family of a kernel or host op name; ``elementwise/other`` when none matches."""
    lower = name.lower()
    for family, markers in FAMILIES:
        if any(marker in lower for marker in markers):
            return family
    return OTHER_FAMILY


def by_family(times: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Sum ``(name, seconds)`` pairs per family, largest first."""
    totals: dict[str, float] = {}
    for name, seconds in times:
        family = kernel_family(name)
        totals[family] = totals.get(family, 0.0) + seconds
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _is_annotation(event: Any) -> bool:
    """Profiler ranges such as ``Optimizer.step#AdamW.step`` also appear on the GPU timeline;
    they are not kernels and would count their time twice."""
    return bool(getattr(event, "is_user_annotation", False)) or "#" in event.key


def _report(prof: Any, steps: int, wall: float, cuda: bool) -> list[str]:
    from torch.autograd import DeviceType

    events = prof.key_averages()
    host = [e for e in events if e.device_type == DeviceType.CPU]
    lines = [f"profiled wall {wall * 1e3:.1f} ms/step"]
    if cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and not _is_annotation(e)]
        busy = sum(e.self_device_time_total for e in kernels) / steps / 1e3
        syncs = sum(e.count for e in host if "Synchronize" in e.key) // steps
        lines.append(f"GPU kernels {busy:.1f} ms/step ({100 * busy / (wall * 1e3):.0f}% busy), "
                     f"{sum(e.count for e in kernels) // steps} launches, {syncs} host syncs")
        timed = [(e.key, e.self_device_time_total / steps / 1e3) for e in kernels]
    else:
        timed = [(e.key, e.self_cpu_time_total / steps / 1e3) for e in host
                 if not _is_annotation(e) and step_parts.range_part(e.key) is None]
    families = ", ".join(f"{k} {v:.1f}" for k, v in by_family(timed).items())
    lines.append(f"by family (ms/step): {families}")
    lines.append("top " + ("kernels" if cuda else "host ops") + ":")
    for name, ms in sorted(timed, key=lambda kv: -kv[1])[:12]:
        lines.append(f"  {ms:8.2f} ms  {name[:100]}")
    own = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    ops = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    table = step_parts.by_part(step_parts.assign(ops), lambda e: own(e) / steps / 1e3,
                               kernel_family)
    lines += part_lines(table, wall * 1e3, "GPU idle" if cuda else "outside any op")
    if cuda:
        lines.append("top host ops (own time):")
        for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:8]:
            lines.append(f"  {e.self_cpu_time_total / steps / 1e3:8.2f} ms x{e.count // steps:<5} "
                         f"{e.key[:90]}")
    return lines


def _build(opts: argparse.Namespace) -> tuple[Any, Any]:
    """``(step_fn, batches)`` as ``benchmark.build_side`` builds them, with the model's parts
    marked for :mod:`tools.step_parts` (and our fused head's loss function, which runs
    outside the model)."""
    args = benchmark.load_args(opts.config, opts.precision, opts.set)
    if opts.side == "ours":
        run, step = benchmark.build_ours(args, fused_loss=True)
        run.loss_fn = step_parts.ranged(run.loss_fn, "head + loss")
        run.engine.step = step_parts.ranged(run.engine.step, "optimizer")  # clipping too
        model = run.engine.module
    else:
        step = benchmark.build_hf(args, opts.precision, opts.device)
        model = step.model
    step_parts.mark_parts(model)
    return step, benchmark.batches_for(args, opts.device)


def part_lines(table: dict[str, dict[str, float]], wall_ms: float, idle_name: str) -> list[str]:
    """The ``{part: {family: ms}}`` table as text, with a last row for the wall time no op
    covers (``idle_name``) and each row's share of ``wall_ms``."""
    columns = [family for family, _ in FAMILIES] + [OTHER_FAMILY, step_parts.FRAMEWORK]
    head = f"{'by part (ms/step)':<18}{'total':>9}{'share':>7}" + "".join(
        f"{c:>{max(len(c), 7) + 1}}" for c in columns)
    lines = [head]
    for part, row in table.items():
        total = sum(row.values())
        lines.append(f"{part:<18}{total:9.1f}{100 * total / wall_ms:6.1f}%" + "".join(
            f"{row.get(c, 0.0):{max(len(c), 7) + 1}.1f}" for c in columns))
    idle = max(wall_ms - sum(sum(row.values()) for row in table.values()), 0.0)
    lines.append(f"{idle_name:<18}{idle:9.1f}{100 * idle / wall_ms:6.1f}%")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="configs/bench/<name>.yml")
    p.add_argument("--precision", default="bf16", choices=sorted(benchmark.PRECISION_DTYPES))
    p.add_argument("--side", default="ours", choices=["ours", "hf"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    opts = p.parse_args(argv)
    opts.device = benchmark.resolve_device(opts.device)
    cuda = opts.device.startswith("cuda")
    opts.config = opts.config or benchmark.DEVICE_DEFAULTS["cuda" if cuda else "cpu"][0][0]

    from torch.profiler import ProfilerActivity, profile

    sync = benchmark.device_sync(opts.device)
    step, data = _build(opts)
    for _ in range(2):
        step(data)
    times = []
    for _ in range(10 if cuda else 2):
        sync()
        start = time.perf_counter()
        step(data)
        sync()
        times.append(time.perf_counter() - start)
    print(f"{opts.side} {opts.config} {opts.precision} on {opts.device}: step median "
          f"{statistics.median(times) * 1e3:.1f} ms")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(opts.steps):
            step(data)
        sync()
        wall = (time.perf_counter() - start) / opts.steps
    print("\n".join(_report(prof, opts.steps, wall, cuda)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
