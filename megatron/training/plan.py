"""The short plan deepy.py prints before it launches anything."""

from __future__ import annotations

from typing import Any


def _vocab(args: Any) -> int | None:
    if args.padded_vocab_size:
        return args.padded_vocab_size
    try:
        from megatron.tokenizer import build_tokenizer, padded_vocab_size

        tok = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file)
    except Exception:  # the plan is informative only; training reports real errors
        return None
    return padded_vocab_size(
        tok.vocab_size, args.make_vocab_size_divisible_by, args.model_parallel_size
    )


def launch_nodes(args: Any) -> int:
    """Nodes the launch will use: from the hostfile when there is one, else `num_nodes`."""
    from pathlib import Path

    if args.hostfile and Path(args.hostfile).is_file():
        from megatron.launch import hostfile_resources

        hosts = hostfile_resources(
            args.hostfile, args.include, args.exclude, args.num_nodes, args.num_gpus
        )
        return max(len(hosts), 1)
    return args.num_nodes if args.num_nodes and args.num_nodes > 0 else 1


def plan_lines(args: Any) -> list[str]:
    """Processes, layout, batch triad, parameter count and tokens per step."""
    tp = args.model_parallel_size
    pp = max(args.pipe_parallel_size, 1)
    dp = args.global_num_gpus // (tp * pp)
    lines = [
        f"processes: {args.global_num_gpus} on {launch_nodes(args)}"
        f" node(s); data x tensor x pipe = {dp} x {tp} x {pp}"
        f" ({'pipeline engine' if args.pipe_parallel_size >= 1 else 'plain engine'})",
        f"batch: train_batch_size {args.train_batch_size} = micro "
        f"{args.train_micro_batch_size_per_gpu} x accumulation "
        f"{args.gradient_accumulation_steps} x data-parallel {dp}",
        f"tokens per step: {args.train_batch_size * args.seq_length:,}"
        f" (seq_length {args.seq_length}); train_iters {args.train_iters}",
        f"precision: {args.precision}; ZeRO stage {args.zero_optimization.get('stage', 0)}",
    ]
    vocab = _vocab(args)
    if vocab is not None:
        from megatron.model import ModelSpec
        from megatron.model.flops import num_parameters

        spec = ModelSpec.from_args(args, padded_vocab_size=vocab)
        lines.append(f"parameters: {num_parameters(spec):,} (padded vocab {vocab})")
    return lines
