"""Benchmark our training step against HuggingFace's GPT-NeoX on the same config and data.

    python tools/benchmark.py [--quick] [--configs 19M pythia-70m] [--precisions fp32 bf16]
                              [--steps N] [--repeats R] [--threads T] [--no-fused-loss]

For each config (``configs/bench/<name>.yml``) and precision, the two sides run alternately
(``ours``, ``hf``, then ``hf``, ``ours``, ...) so machine noise hits both. Every measurement is
a fresh subprocess, so peak RSS (``getrusage``) belongs to one side only.

- ours: the real engine path, ``megatron.training.engine.build_run`` (DeepSpeed engine, one
  process) and ``megatron.training.step.train_step``; bf16 is DeepSpeed's bf16 mode (bf16
  weights, fp32 master weights in the optimizer).
- hf: ``transformers.GPTNeoXForCausalLM`` (SDPA attention) and ``torch.optim.AdamW`` in a
  plain loop with gradient clipping; bf16 is ``torch.autocast`` over fp32 weights.

Both get the same random tokens. Reported per side: tokens/s (median step), MFU (exact model
FLOPs from ``megatron.model.flops`` over the GEMM peak measured in this run), peak RSS, the
share of step time spent waiting for data, and the ratios ours/HF.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python tools/benchmark.py`
    sys.path.insert(0, str(ROOT))

CONFIG_DIR = ROOT / "configs" / "bench"
RESULT_TAG = "BENCH_RESULT "
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Measurement:
    """One side's run of one config: per-step wall, CPU and data-wait seconds, peak RSS.

    CPU seconds (all threads of the process) are reported next to wall time because on a
    shared machine the wall time also measures the neighbours.
    """

    side: str
    step_s: list[float]
    data_s: list[float]
    peak_rss_mb: float
    setup_s: float
    cpu_s: list[float]

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu_s)

    @property
    def data_fraction(self) -> float:
        return sum(self.data_s) / sum(self.step_s)


def model_flops_utilisation(flops_per_step: float, step_s: float, peak_flops: float) -> float:
    """Achieved model FLOP/s over the measured GEMM peak FLOP/s (one process)."""
    return flops_per_step / step_s / peak_flops


def alternation(repeats: int) -> list[str]:
    """Side order over ``repeats`` rounds: ours, hf, hf, ours, ... (each side first as often)."""
    order: list[str] = []
    for r in range(repeats):
        order += ["ours", "hf"] if r % 2 == 0 else ["hf", "ours"]
    return order


def merge(runs: list[Measurement]) -> Measurement:
    """Pool the steps of one side's repeated runs; peak RSS is the largest seen."""
    return Measurement(runs[0].side, [s for r in runs for s in r.step_s],
                       [s for r in runs for s in r.data_s],
                       max(r.peak_rss_mb for r in runs), statistics.median(r.setup_s for r in runs),
                       [s for r in runs for s in r.cpu_s])


# ---------------------------------------------------------------- worker side (subprocess)

def load_args(config: str, precision: str) -> Any:
    from megatron.neox_arguments import NeoXArgs

    return NeoXArgs.from_ymls([str(CONFIG_DIR / f"{config}.yml")],
                              overwrite_values={"precision": precision})


def random_batches(batch: int, seq: int, vocab: int, seed: int = 0) -> Iterator[tuple]:
    """Endless ((tokens, position_ids), (labels, loss_mask)) of uniform random token ids."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    position_ids = torch.arange(seq).expand(batch, seq)
    mask = torch.ones(batch, seq)
    while True:
        text = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
        yield (text[:, :-1], position_ids), (text[:, 1:], mask)


class TimedIterator:
    """Wraps an iterator and adds up the seconds spent in ``next``."""

    def __init__(self, inner: Iterator[Any]) -> None:
        self.inner, self.waited = inner, 0.0

    def __iter__(self) -> TimedIterator:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        item = next(self.inner)
        self.waited += time.perf_counter() - start
        return item


def _single_process_env() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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


def build_hf(args: Any, precision: str) -> Any:
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
    model = GPTNeoXForCausalLM(config).train()
    params = args.optimizer["params"]
    opt = torch.optim.AdamW(model.parameters(), lr=params["lr"], betas=tuple(params["betas"]),
                            eps=params["eps"], weight_decay=args.weight_decay)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" \
        else contextlib.nullcontext

    def step(data: Iterator[tuple]) -> None:
        (tokens, _), _ = next(data)
        with autocast():
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.gradient_clipping)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_worker(opts: argparse.Namespace) -> dict[str, Any]:
    """Build one side, time ``warmup + steps`` optimizer steps, report as a dict."""
    import torch

    torch.set_num_threads(opts.threads)
    start = time.perf_counter()
    args = load_args(opts.config, opts.precision)
    if opts.worker == "ours":
        _, step = build_ours(args, fused_loss=not opts.no_fused_loss)
    else:
        step = build_hf(args, opts.precision)
    setup = time.perf_counter() - start
    data = TimedIterator(random_batches(args.train_micro_batch_size_per_gpu, args.seq_length,
                                        min(args.padded_vocab_size, 50257)))
    step_s, data_s, cpu_s = [], [], []
    for i in range(opts.warmup + opts.steps):
        waited, t0, c0 = data.waited, time.perf_counter(), time.process_time()
        step(data)
        if i >= opts.warmup:
            step_s.append(time.perf_counter() - t0)
            cpu_s.append(time.process_time() - c0)
            data_s.append(data.waited - waited)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"side": opts.worker, "step_s": step_s, "data_s": data_s, "peak_rss_mb": rss_mb,
            "setup_s": setup, "cpu_s": cpu_s}


# ---------------------------------------------------------------- parent side

def measure(side: str, config: str, precision: str, opts: argparse.Namespace) -> Measurement:
    """Run one side in a fresh subprocess and parse its result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--config", config,
           "--precision", precision, "--steps", str(opts.steps), "--warmup", str(opts.warmup),
           "--threads", str(opts.threads)] + (["--no-fused-loss"] if opts.no_fused_loss else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {side}/{config}/{precision} failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return Measurement(**json.loads(lines[-1][len(RESULT_TAG):]))


def peak_flops(precision: str, threads: int) -> float:
    """GEMM peak FLOP/s measured now (a fresh cache, so not a stale number)."""
    import torch

    from megatron.utils.throughput import measure_peak_flops

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        return measure_peak_flops(getattr(torch, PRECISION_DTYPES[precision]), size=1024,
                                  seconds=2.0, cache_dir=tmp)


def flops_and_tokens(config: str) -> tuple[int, int]:
    """Model FLOPs of one step and its tokens, from the exact counts of the spec."""
    from megatron.model import ModelSpec, flops_per_iteration

    args = load_args(config, "fp32")
    spec = ModelSpec.from_args(args)
    batch = args.train_micro_batch_size_per_gpu * args.gradient_accumulation_steps
    flops = flops_per_iteration(spec, batch, args.seq_length, args.checkpoint_activations)
    return flops, batch * args.seq_length


def row(config: str, precision: str, m: Measurement, tokens: int, flops: int,
        peak: float) -> dict[str, Any]:
    step = m.median_step_s
    return {"config": config, "precision": precision, "side": m.side, "step_s": step,
            "tokens_per_s": tokens / step, "tokens_per_cpu_s": tokens / m.median_cpu_s,
            "mfu": model_flops_utilisation(flops, step, peak),
            "peak_rss_mb": m.peak_rss_mb, "data_wait": m.data_fraction, "setup_s": m.setup_s}


def compare(config: str, precision: str, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Alternate the sides, then one row per side plus the ours/HF ratios."""
    flops, tokens = flops_and_tokens(config)
    peak = peak_flops(precision, opts.threads)
    runs: dict[str, list[Measurement]] = {"ours": [], "hf": []}
    for side in alternation(opts.repeats):
        runs[side].append(measure(side, config, precision, opts))
    rows = [row(config, precision, merge(runs[s]), tokens, flops, peak) for s in ("ours", "hf")]
    ours, hf = rows
    rows.append({"config": config, "precision": precision, "side": "ours/hf",
                 "tokens_per_s": ours["tokens_per_s"] / hf["tokens_per_s"],
                 "tokens_per_cpu_s": ours["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"],
                 "peak_rss_mb": ours["peak_rss_mb"] / hf["peak_rss_mb"],
                 "peak_tflops": peak / 1e12})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table; ratio rows show tokens/s and RSS ratios."""
    head = (f"{'config':<11} {'prec':<5} {'side':<8} {'step s':>7} {'tok/s':>8} {'MFU':>6} "
            f"{'tok/cpu-s':>9} {'RSS MB':>8} {'data %':>6} {'setup s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["side"] == "ours/hf":
            lines.append(f"{r['config']:<11} {r['precision']:<5} {'ours/hf':<8} {'':>7} "
                         f"{r['tokens_per_s']:>7.2f}x {'':>6} {r['tokens_per_cpu_s']:>8.2f}x "
                         f"{r['peak_rss_mb']:>7.2f}x "
                         f"  (GEMM peak {r['peak_tflops'] * 1e3:.1f} GFLOP/s)")
            continue
        lines.append(f"{r['config']:<11} {r['precision']:<5} {r['side']:<8} {r['step_s']:>7.2f} "
                     f"{r['tokens_per_s']:>8.0f} {100 * r['mfu']:>5.1f}% "
                     f"{r['tokens_per_cpu_s']:>9.0f} "
                     f"{r['peak_rss_mb']:>8.0f} {100 * r['data_wait']:>5.2f}% "
                     f"{r['setup_s']:>7.1f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["19M", "pythia-70m"],
                   help="names of configs/bench/*.yml")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                   choices=sorted(PRECISION_DTYPES))
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=None, help="measurements per side")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 2 steps, 1 repeat")
    p.add_argument("--no-fused-loss", action="store_true", help="our unfused head and loss")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
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
    for name in opts.configs:
        if not (CONFIG_DIR / f"{name}.yml").is_file():
            print(f"unknown config {name!r}: no {CONFIG_DIR / name}.yml", file=sys.stderr)
            return 2
    rows: list[dict[str, Any]] = []
    for config in opts.configs:
        for precision in opts.precisions:
            rows += compare(config, precision, opts)
            print(format_table(rows[-3:]), flush=True)
    print("\n" + format_table(rows))
    if opts.json is not None:
        opts.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
