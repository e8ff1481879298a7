"""Benchmark our training step against HuggingFace's GPT-NeoX on the same config and data.

    python tools/benchmark.py [--quick] [--configs 19M pythia-70m] [--precisions fp32 bf16]
                              [--steps N] [--repeats R] [--threads T] [--no-fused-loss]
                              [--path engine|deepy] [--device auto|cpu|cuda]
                              [--set KEY=VALUE ...] [--json FILE]

For each config (``configs/bench/<name>.yml``) and precision, the sides run alternately (each
round starts one side later: ``ours``, ``hf``, then ``hf``, ``ours``, ...) so machine noise
hits all of them. Every measurement is a fresh process tree, so peak RSS belongs to one side.

- ours (``--path engine``, the default): the engine built in-process,
  ``megatron.training.engine.build_run`` (DeepSpeed engine, one process) and
  ``megatron.training.step.train_step`` over random batches; bf16 is bf16 weights with fp32
  master weights in the optimizer (ours at ZeRO stage 0, megatron/training/master_weights.py;
  DeepSpeed's under ZeRO).
- ours-1p, ours-2p (``--path deepy``): ``./deepy.py train.py`` launched for real (see
  tools/benchmark_deepy.py) on a random-token ``.bin/.idx`` corpus, as 1 process with
  ``--threads`` torch threads and as 2 data-parallel processes with ``--threads // 2`` each
  and the same global batch. Step time, data-wait share and peak RSS (summed over ranks, and
  the largest rank's as ``proc MB``) are the trainer's own ``metrics.jsonl`` values; warm-up
  iterations are left out. Setup is the wall time from starting deepy until the training
  loop started. There is no per-step CPU time, so tokens per CPU-second stays empty.
- hf: ``transformers.GPTNeoXForCausalLM`` (SDPA attention) and ``torch.optim.AdamW`` in a
  plain loop with gradient clipping, one process with ``--threads`` threads; bf16 is
  ``torch.autocast`` over fp32 weights.

On a GPU (``--device auto`` picks CUDA when torch sees one) every step is timed from an idle
GPU to an idle GPU (synchronised before and after), the GEMM peak is probed with 8192-cubed
products, HF gets torch's fused AdamW (what a GPU user would take) and the peak allocated GPU
memory is reported as well; ``--path deepy`` then measures 1 process only on a one-GPU
machine. ``configs/bench/125M.yml`` and ``1-3B.yml`` are the GPU shapes, the default there
(in bf16).

All get uniform random tokens. Reported per side: tokens/s (median step), MFU, peak RSS, the
share of step time spent waiting for data, and the ratios of each ``ours`` side over HF.
MFU is the exact model FLOPs of one step (``megatron.model.flops``, global batch) over the
median step time over the GEMM peak measured in this run with ``--threads`` threads. That peak
is the whole machine's, so it is the denominator for 2 processes (1 thread each) as for 1:
MFU then compares the use of the same cores, not of one process's share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python tools/benchmark.py`
    sys.path.insert(0, str(ROOT))

try:
    from tools import benchmark_deepy, step_parts
except ImportError:  # run as `python tools/benchmark.py`, or with tools/ on sys.path
    import benchmark_deepy  # type: ignore[no-redef]
    import step_parts  # type: ignore[no-redef]

CONFIG_DIR = ROOT / "configs" / "bench"
RESULT_TAG = "BENCH_RESULT "
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
SIDES = {"engine": ("ours", "hf"), "deepy": ("ours-1p", "ours-2p", "hf")}
DEEPY_PROCESSES = {"ours-1p": 1, "ours-2p": 2}
DEVICE_DEFAULTS = {
    "cpu": (["19M", "pythia-70m"], ["fp32", "bf16"]),
    "cuda": (["125M", "1-3B"], ["bf16"]),  # shapes a GPU can fill; bf16 is its training dtype
}
"""``(configs, precisions)`` when ``--configs`` / ``--precisions`` are not given."""


@dataclass(frozen=True)
class Measurement:
    """One side's run of one config: per-step wall, CPU and data-wait seconds, peak RSS.

    CPU seconds (all threads of the process) are reported next to wall time because on a
    shared machine the wall time also measures the neighbours; deepy runs have none (empty).
    """

    side: str
    step_s: list[float]
    data_s: list[float]
    peak_rss_mb: float
    setup_s: float | None
    cpu_s: list[float]
    truncated: bool = False
    """A step ran past ``--step-limit`` and was cut off: its time is a lower bound."""
    peak_gpu_mb: float | None = None
    """``torch.cuda.max_memory_allocated`` on a GPU run; None on the CPU."""
    process_rss_mb: float | None = None
    """The largest single process's peak RSS where ``peak_rss_mb`` sums several; None: one
    process (see :attr:`largest_process_rss_mb`)."""

    @property
    def largest_process_rss_mb(self) -> float:
        return self.peak_rss_mb if self.process_rss_mb is None else self.process_rss_mb

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def median_cpu_s(self) -> float | None:
        return statistics.median(self.cpu_s) if self.cpu_s else None

    @property
    def data_fraction(self) -> float:
        return sum(self.data_s) / sum(self.step_s)


def model_flops_utilisation(flops_per_step: float, step_s: float, peak_flops: float) -> float:
    """Achieved model FLOP/s over the measured GEMM peak FLOP/s (of all the threads used)."""
    return flops_per_step / step_s / peak_flops


def alternation(repeats: int, sides: tuple[str, ...] = ("ours", "hf")) -> list[str]:
    """Side order over ``repeats`` rounds, each round rotated by one: ours, hf, hf, ours, ...

    Over any ``len(sides)`` consecutive rounds every side comes first once.
    """
    order: list[str] = []
    for r in range(repeats):
        shift = r % len(sides)
        order += list(sides[shift:] + sides[:shift])
    return order


def merge(runs: list[Measurement]) -> Measurement:
    """Pool the steps of one side's repeated runs; peak RSS and GPU memory are the largest seen."""
    setups = [r.setup_s for r in runs if r.setup_s is not None]
    gpu = [r.peak_gpu_mb for r in runs if r.peak_gpu_mb is not None]
    per_process = [r.process_rss_mb for r in runs if r.process_rss_mb is not None]
    return Measurement(runs[0].side, [s for r in runs for s in r.step_s],
                       [s for r in runs for s in r.data_s], max(r.peak_rss_mb for r in runs),
                       statistics.median(setups) if setups else None,
                       [s for r in runs for s in r.cpu_s], any(r.truncated for r in runs),
                       max(gpu) if gpu else None, max(per_process) if per_process else None)


# ---------------------------------------------------------------- worker side (subprocess)

def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as config values; VALUE is read as YAML (``1``, ``true``, ``[2]``)."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        values[key.replace("-", "_")] = yaml.safe_load(value)
    return values


def load_args(config: str, precision: str, overrides: list[str] | None = None) -> Any:
    from megatron.neox_arguments import NeoXArgs

    values = {**parse_overrides(overrides or []), "precision": precision}
    return NeoXArgs.from_ymls([str(CONFIG_DIR / f"{config}.yml")], overwrite_values=values)


def random_batches(batch: int, seq: int, vocab: int, seed: int = 0,
                   device: str = "cpu") -> Iterator[tuple]:
    """Endless ((tokens, position_ids), (labels, loss_mask)) of uniform random token ids.

    Drawn on the CPU (the same ids on every device) and copied to ``device``, as the trainer's
    data iterator does.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    position_ids = torch.arange(seq).expand(batch, seq).to(device)
    mask = torch.ones(batch, seq, device=device)
    while True:
        text = torch.randint(0, vocab, (batch, seq + 1), generator=gen).to(device)
        yield (text[:, :-1], position_ids), (text[:, 1:], mask)


def resolve_device(choice: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, so a GPU machine is never benchmarked on its CPU."""
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _single_process_env() -> None:
    port = benchmark_deepy.free_port()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                      LOCAL_RANK="0", WORLD_SIZE="1")


def build_ours(args: Any, fused_loss: bool) -> tuple[Any, Any]:
    """The engine exactly as training builds it; returns ``(run, step_fn)``."""
    import functools

    from megatron.model import build_model
    from megatron.training import engine
    from megatron.training.step import train_step

    _single_process_env()
    if not fused_loss:  # build_run fuses the head where it can; --no-fused-loss turns it off

        def plain_head(*positional: Any, **options: Any) -> Any:
            return build_model(*positional, **{**options, "fused_loss": False})

        engine.build_model = plain_head
    run = engine.build_run(args)
    return run, functools.partial(train_step, run)


def build_hf(args: Any, precision: str, device: str = "cpu") -> Any:
    """GPTNeoXForCausalLM + AdamW; returns ``step_fn(data)`` doing one optimizer step."""
    import contextlib

    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(args.seed)
    config = GPTNeoXConfig(
        vocab_size=args.padded_vocab_size, hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_attention_heads,
        intermediate_size=4 * args.hidden_size, rotary_pct=args.rotary_pct,
        rotary_emb_base=args.rotary_emb_base, max_position_embeddings=args.seq_length,
        use_parallel_residual=args.gpt_j_residual, tie_word_embeddings=not args.no_weight_tying,
        hidden_dropout=0.0, attention_dropout=0.0, layer_norm_eps=args.layernorm_epsilon)
    config._attn_implementation = "sdpa"
    model = GPTNeoXForCausalLM(config).to(device).train()
    params = args.optimizer["params"]
    # On a GPU a user would take torch's fused AdamW; on the CPU there is none to take.
    fused = {"fused": True} if device.startswith("cuda") else {}
    opt = torch.optim.AdamW(model.parameters(), lr=params["lr"], betas=tuple(params["betas"]),
                            eps=params["eps"], weight_decay=args.weight_decay, **fused)
    device_type = torch.device(device).type
    autocast = (lambda: torch.autocast(device_type, dtype=torch.bfloat16)) \
        if precision == "bf16" else contextlib.nullcontext

    def step(data: Iterator[tuple]) -> None:
        (tokens, _), _ = next(data)
        with autocast():
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        with torch.profiler.record_function(step_parts.RANGE_PREFIX + "optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.gradient_clipping)
            opt.step()
            opt.zero_grad(set_to_none=True)

    step.model = model  # tools/profile_step.py marks its parts
    return step


def build_side(side: str, config: str, precision: str, *, device: str = "cpu",
               overrides: list[str] | None = None,
               fused_loss: bool = True) -> tuple[Any, Any, Iterator[tuple]]:
    """``(args, step_fn, batches)`` of one side (``ours`` or ``hf``) as every measurement
    builds it: the config with ``overrides``, the model on ``device``, random batches there."""
    args = load_args(config, precision, overrides)
    if side == "ours":
        _, step = build_ours(args, fused_loss=fused_loss)
    else:
        step = build_hf(args, precision, device)
    return args, step, batches_for(args, device)


def batches_for(args: Any, device: str) -> Iterator[tuple]:
    """The random batches of ``args``' shape that every side trains on."""
    return random_batches(args.train_micro_batch_size_per_gpu, args.seq_length,
                          min(args.padded_vocab_size, 50257), device=device)


def device_sync(device: str) -> Any:
    """A function that waits for ``device``'s queued work (nothing to wait for on a CPU)."""
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


class StepLimit:
    """Cut the worker off when one step runs past ``limit`` seconds, reporting that step's
    time so far as a lower bound (``truncated``).

    HuggingFace's bf16 autocast step takes over 10 minutes on a CPU without bf16 GEMMs
    (``megatron/utils/gemm.py``); a lower bound is all the comparison needs there.
    """

    def __init__(self, limit: float | None, result: dict[str, Any], t0: float,
                 c0: float) -> None:
        self.limit, self.result, self.t0, self.c0 = limit, result, t0, c0
        self.done = threading.Event()

    def _watch(self) -> None:
        if self.done.wait(self.limit):
            return
        from megatron.training.profiling import peak_rss_mb

        report = {**self.result, "step_s": [time.perf_counter() - self.t0], "data_s": [0.0],
                  "peak_rss_mb": peak_rss_mb(), "cpu_s": [time.process_time() - self.c0],
                  "truncated": True}
        print(RESULT_TAG + json.dumps(report), flush=True)
        os._exit(0)  # the step is still running in the main thread

    def __enter__(self) -> None:
        if self.limit:
            threading.Thread(target=self._watch, daemon=True).start()

    def __exit__(self, *exc: object) -> None:
        self.done.set()


def run_worker(opts: argparse.Namespace) -> dict[str, Any]:
    """Build one side, time ``warmup + steps`` optimizer steps, report as a dict."""
    import torch

    from megatron.data.iterator import TimedIterator
    from megatron.training.profiling import peak_rss_mb

    torch.set_num_threads(opts.threads)
    sync = device_sync(opts.device)
    start = time.perf_counter()
    _, step, batches = build_side(opts.worker, opts.config, opts.precision, device=opts.device,
                                  overrides=opts.set, fused_loss=not opts.no_fused_loss)
    setup = time.perf_counter() - start
    data = TimedIterator(batches)
    step_s, data_s, cpu_s = [], [], []
    for i in range(opts.warmup + opts.steps):
        sync()  # a GPU step is timed from idle to idle: queued kernels count where they ran
        waited, t0, c0 = data.waited, time.perf_counter(), time.process_time()
        with StepLimit(opts.step_limit, {"side": opts.worker, "setup_s": setup}, t0, c0):
            step(data)
            sync()
        if i >= opts.warmup:
            step_s.append(time.perf_counter() - t0)
            cpu_s.append(time.process_time() - c0)
            data_s.append(data.waited - waited)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if opts.device.startswith("cuda") \
        else None
    return {"side": opts.worker, "step_s": step_s, "data_s": data_s, "peak_rss_mb": peak_rss_mb(),
            "setup_s": setup, "cpu_s": cpu_s, "peak_gpu_mb": gpu_mb}


# ---------------------------------------------------------------- parent side

def measure(side: str, config: str, precision: str, opts: argparse.Namespace) -> Measurement:
    """Run one side in a fresh subprocess and parse its result line."""
    if side in DEEPY_PROCESSES:
        return Measurement(**benchmark_deepy.measure(
            side, CONFIG_DIR / f"{config}.yml", DEEPY_PROCESSES[side], precision,
            warmup=opts.warmup, steps=opts.steps, threads=opts.threads,
            overrides=parse_overrides(opts.set)))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--config", config,
           "--precision", precision, "--steps", str(opts.steps), "--warmup", str(opts.warmup),
           "--threads", str(opts.threads), "--step-limit", str(opts.step_limit or 0),
           "--device", opts.device]
    cmd += ["--no-fused-loss"] if opts.no_fused_loss else []
    cmd += [arg for pair in opts.set for arg in ("--set", pair)]
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), TOKENIZERS_PARALLELISM="false")
    if side == "ours":  # the allocator deepy.py gives its workers (launch/allocator.py)
        from megatron.launch import allocator_env

        env.update(allocator_env(os.environ))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {side}/{config}/{precision} failed "
                           f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-4000:]}")
    return Measurement(**json.loads(lines[-1][len(RESULT_TAG):]))


def peak_flops(precision: str, threads: int, device: str = "cpu") -> float:
    """GEMM peak FLOP/s measured now (a fresh cache, so not a stale number), with the probe
    the trainer uses on ``device`` (``megatron.utils.throughput.peak_probe``)."""
    import torch

    from megatron.utils.throughput import measure_peak_flops, peak_probe

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        return measure_peak_flops(getattr(torch, PRECISION_DTYPES[precision]), seconds=2.0,
                                  cache_dir=tmp, **peak_probe(device))


def flops_and_tokens(config: str, overrides: list[str] | None = None) -> tuple[int, int]:
    """Model FLOPs of one step and its tokens, from the exact counts of the spec."""
    from megatron.model import ModelSpec, flops_per_iteration

    args = load_args(config, "fp32", overrides)
    spec = ModelSpec.from_args(args)
    batch = args.train_micro_batch_size_per_gpu * args.gradient_accumulation_steps
    flops = flops_per_iteration(spec, batch, args.seq_length, args.checkpoint_activations)
    return flops, batch * args.seq_length


def row(config: str, precision: str, m: Measurement, tokens: int, flops: int,
        peak: float) -> dict[str, Any]:
    step, cpu = m.median_step_s, m.median_cpu_s
    return {"config": config, "precision": precision, "side": m.side, "step_s": step,
            "tokens_per_s": tokens / step, "tokens_per_cpu_s": tokens / cpu if cpu else None,
            "mfu": model_flops_utilisation(flops, step, peak),
            "peak_rss_mb": m.peak_rss_mb, "process_rss_mb": m.largest_process_rss_mb,
            "data_wait": m.data_fraction, "setup_s": m.setup_s,
            "truncated": m.truncated, "peak_gpu_mb": m.peak_gpu_mb}


def round_ratios(ours: list[Measurement], hf: list[Measurement]) -> list[float]:
    """Ours/HF tokens/s of each round alone (the i-th run of each side, launched next to each
    other): their spread shows how far the host's changing speed moved the pooled ratio."""
    return [h.median_step_s / o.median_step_s for o, h in zip(ours, hf, strict=True)]


def ratio(ours: dict[str, Any], hf: dict[str, Any], peak: float,
          rounds: list[float] | None = None) -> dict[str, Any]:
    """The ``<ours side>/hf`` row: tokens/s, tokens per CPU-second (when both have it), RSS
    (all processes summed, and the largest one's), GPU memory (when both have it) and the
    per-round tokens/s ratios (``rounds``, see :func:`round_ratios`)."""
    per_cpu = gpu = None
    cut_off = hf.get("truncated", False)  # it never reached its peak memory: no RSS ratios
    if ours["tokens_per_cpu_s"] and hf["tokens_per_cpu_s"]:
        per_cpu = ours["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"]
    if ours.get("peak_gpu_mb") and hf.get("peak_gpu_mb"):
        gpu = ours["peak_gpu_mb"] / hf["peak_gpu_mb"]
    return {"config": ours["config"], "precision": ours["precision"],
            "side": f"{ours['side']}/hf", "tokens_per_s": ours["tokens_per_s"] / hf["tokens_per_s"],
            "tokens_per_cpu_s": per_cpu,
            "peak_rss_mb": None if cut_off else ours["peak_rss_mb"] / hf["peak_rss_mb"],
            "process_rss_mb": None if cut_off else ours["process_rss_mb"] / hf["process_rss_mb"],
            "peak_tflops": peak / 1e12, "at_least": cut_off,
            "peak_gpu_mb": gpu, "rounds": rounds or []}


def compare(config: str, precision: str, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Alternate the sides, then one row per side plus each ours/HF ratio."""
    sides = SIDES[opts.path]
    if opts.device.startswith("cuda") and opts.path == "deepy":
        sides = tuple(s for s in sides if DEEPY_PROCESSES.get(s, 1) <= _gpu_count())
    flops, tokens = flops_and_tokens(config, opts.set)
    peak = peak_flops(precision, opts.threads, opts.device)
    runs: dict[str, list[Measurement]] = {side: [] for side in sides}
    for side in alternation(opts.repeats, sides):
        runs[side].append(measure(side, config, precision, opts))
    # Probed again after the sides: a shared host's slow spells last seconds to minutes (a
    # 2-core AMX host read 424 GFLOP/s bf16 before one block and 1.1 TFLOP/s after another),
    # and a low peak shows as MFU above 100%.
    peak = max(peak, peak_flops(precision, opts.threads, opts.device))
    rows = {s: row(config, precision, merge(runs[s]), tokens, flops, peak) for s in sides}
    ratios = [ratio(rows[s], rows["hf"], peak, round_ratios(runs[s], runs["hf"]))
              for s in sides if s != "hf"]
    return list(rows.values()) + ratios


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _cell(value: float | None, spec: str, width: int, suffix: str = "") -> str:
    """``value`` formatted, or ``-`` when there is none, right-aligned in ``width``."""
    text = "-" if value is None else f"{value:{spec}}{suffix}"
    return f"{text:>{width}}"


def _spread(rounds: list[float]) -> str:
    """``; rounds 1.08-1.22x`` for two rounds or more, else nothing."""
    return f"; rounds {min(rounds):.2f}-{max(rounds):.2f}x" if len(rounds) > 1 else ""


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table; ratio rows (side ``x/hf``) show tokens/s and RSS ratios."""
    head = (f"{'config':<11} {'prec':<5} {'side':<10} {'step s':>7} {'tok/s':>8} {'MFU':>6} "
            f"{'tok/cpu-s':>9} {'RSS MB':>8} {'proc MB':>8} {'data %':>6} {'setup s':>7} "
            f"{'GPU MB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        start = f"{r['config']:<11} {r['precision']:<5} {r['side']:<10} "
        if r["side"].endswith("/hf"):
            bound = ">=" if r.get("at_least") else ""
            lines.append(start + f"{bound:>7} {_cell(r['tokens_per_s'], '.2f', 8, 'x')} {'':>6} "
                         f"{_cell(r['tokens_per_cpu_s'], '.2f', 9, 'x')} "
                         f"{_cell(r['peak_rss_mb'], '.2f', 8, 'x')} "
                         f"{_cell(r.get('process_rss_mb'), '.2f', 8, 'x')} {'':>6} {'':>7} "
                         f"{_cell(r.get('peak_gpu_mb'), '.2f', 8, 'x')} "
                         f"  (GEMM peak {r['peak_tflops'] * 1e3:.1f} GFLOP/s"
                         f"{_spread(r.get('rounds', []))})")
            continue
        cut = ">" if r.get("truncated") else ""  # a cut-off step: time at least this
        lines.append(start + f"{cut + format(r['step_s'], '.2f'):>7} {r['tokens_per_s']:>8.0f} "
                     f"{100 * r['mfu']:>5.1f}% {_cell(r['tokens_per_cpu_s'], '.0f', 9)} "
                     f"{r['peak_rss_mb']:>8.0f} {_cell(r.get('process_rss_mb'), '.0f', 8)} "
                     f"{100 * r['data_wait']:>5.2f}% "
                     f"{_cell(r['setup_s'], '.1f', 7)} {_cell(r.get('peak_gpu_mb'), '.0f', 8)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=None,
                   help="names of configs/bench/*.yml (default: 19M pythia-70m on a CPU, "
                        "125M 1-3B on a GPU)")
    p.add_argument("--precisions", nargs="+", default=None,
                   choices=sorted(PRECISION_DTYPES),
                   help="default: fp32 bf16 on a CPU, bf16 on a GPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=None, help="measurements per side")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 steps, 1 repeat")
    p.add_argument("--no-fused-loss", action="store_true", help="our unfused head and loss")
    p.add_argument("--path", choices=sorted(SIDES), default="engine",
                   help="engine: our engine built in-process; deepy: ./deepy.py train.py "
                        "launched for real, as 1 and as 2 processes")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--no-malloc-tunables", action="store_true",
                   help="run ours with glibc's malloc and its default settings instead of "
                        "the allocator deepy.py picks (jemalloc, else glibc with "
                        "megatron.launch.WORKER_MALLOC_TUNABLES)")
    p.add_argument("--step-limit", type=float, default=300.0,
                   help="seconds after which one in-process step is cut off and reported as a "
                        "lower bound (0: no limit)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the steps run; auto is CUDA when torch sees a GPU")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every side (VALUE read as YAML); repeatable")
    p.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.device = resolve_device(opts.device)
    configs, precisions = DEVICE_DEFAULTS["cuda" if opts.device.startswith("cuda") else "cpu"]
    opts.configs = opts.configs or configs
    opts.precisions = opts.precisions or precisions
    if opts.path == "deepy" and opts.no_fused_loss:
        p.error("--no-fused-loss only works with --path engine (it patches the in-process build)")
    quick = {"steps": 2, "warmup": 1, "repeats": 1}
    full = {"steps": 3, "warmup": 1, "repeats": 2}
    for key, value in (quick if opts.quick else full).items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.worker:
        print(RESULT_TAG + json.dumps(run_worker(opts)), flush=True)
        return 0
    if opts.no_malloc_tunables:
        os.environ["MEGATRON_ALLOCATOR"] = "glibc"  # deepy and allocator_env keep glibc,
        os.environ["GLIBC_TUNABLES"] = ""  # and an empty value: they add no tunables
    for name in opts.configs:
        if not (CONFIG_DIR / f"{name}.yml").is_file():
            print(f"unknown config {name!r}: no {CONFIG_DIR / name}.yml", file=sys.stderr)
            return 2
    from megatron.launch import choose_allocator

    print(f"ours: worker malloc {choose_allocator(os.environ).describe()}; "
          "HF: the process's own", flush=True)
    rows: list[dict[str, Any]] = []
    for config in opts.configs:
        for precision in opts.precisions:
            block = compare(config, precision, opts)
            rows += block
            print(format_table(block), flush=True)
    print("\n" + format_table(rows))
    if opts.json is not None:
        opts.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
