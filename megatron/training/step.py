"""One optimizer step, for the pipeline engine and the plain engine alike.

The pipeline engine runs its own micro-batch schedule (`train_batch`); the plain engine
gets the same micro-batches from us, one forward/backward each, and DeepSpeed applies the
optimizer at the accumulation boundary. Both return the loss averaged over the
micro-batches and the data-parallel ranks, so the loop above cannot tell them apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step reports."""

    loss: float
    grad_norm: float | None
    skipped: bool
    """The update was withheld: non-finite gradients, or an fp16 loss-scale overflow."""


def _mean_over(value: torch.Tensor, group: Any, size: int) -> torch.Tensor:
    if size > 1:
        value = value.clone()
        dist.all_reduce(value, group=group)
        value /= size
    return value


def train_step(run: Any, data: Iterator[tuple]) -> StepResult:
    """Run one optimizer step on `run.engine` and report its loss."""
    engine = run.engine
    if run.is_pipe:
        loss = engine.train_batch(data_iter=data).detach().float()
    else:
        total = torch.zeros((), dtype=torch.float32, device=engine.device)
        accum = engine.gradient_accumulation_steps()
        for _ in range(accum):
            inputs, labels = next(data)
            loss = run.loss_fn(engine(inputs), labels)
            engine.backward(loss)
            engine.step()
            total += loss.detach().float()
        loss = _mean_over(total / accum, run.groups.dp.group, run.groups.dp.size)
    value = float(loss)
    norm = engine.get_global_grad_norm()
    norm = float(norm) if norm is not None else None
    withheld = run.guard is not None and run.guard.skipped_last
    skipped = withheld or not engine.was_step_applied() or not math.isfinite(value)
    return StepResult(loss=value, grad_norm=norm, skipped=skipped)


@contextmanager
def _eval_mode(engine: Any) -> Iterator[None]:
    """Dropout off and no autograd for the block; training mode restored afterwards."""
    engine.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        engine.train()


def eval_loss(run: Any, data: Iterator[tuple], iters: int) -> float:
    """Mean loss over `iters` global batches, without touching the optimizer."""
    engine = run.engine
    total = 0.0
    with _eval_mode(engine):
        for _ in range(iters):
            if run.is_pipe:
                total += float(engine.eval_batch(data_iter=data))
                continue
            acc = torch.zeros((), dtype=torch.float32, device=engine.device)
            accum = engine.gradient_accumulation_steps()
            for _ in range(accum):
                inputs, labels = next(data)
                acc += run.loss_fn(engine(inputs), labels).float()
            total += float(_mean_over(acc / accum, run.groups.dp.group, run.groups.dp.size))
    return total / max(iters, 1)


def _fixed_batch(run: Any) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """A deterministic batch that depends only on the config, for checkpoint validation."""
    a = run.args
    rows = a.train_micro_batch_size_per_gpu
    steps = torch.arange(rows * (a.seq_length + 1), dtype=torch.int64)
    text = ((steps * 7919 + 104729) % run.tokenizer.vocab_size).view(rows, a.seq_length + 1)
    positions = torch.arange(a.seq_length, dtype=torch.int64).expand(rows, -1).contiguous()
    device = run.engine.device
    inputs = (text[:, :-1].to(device), positions.to(device))
    labels = (text[:, 1:].to(device), torch.ones(rows, a.seq_length, device=device))
    return inputs, labels


def fixed_batch_loss(run: Any) -> float:
    """Loss of the model on `_fixed_batch`, in eval mode (no dropout), on every rank."""
    batch = _fixed_batch(run)
    engine = run.engine
    with _eval_mode(engine):
        if run.is_pipe:
            copies = iter([batch] * engine.gradient_accumulation_steps())
            return float(engine.eval_batch(data_iter=copies))
        inputs, labels = batch
        return float(run.loss_fn(engine(inputs), labels))
