"""The training loop: step, log, maybe evaluate, maybe save, check stop conditions.

Pre-emption (SIGTERM / SIGINT) only sets a flag; the loop finishes the step in flight,
saves, and returns, so a cluster's kill never lands in the middle of a checkpoint.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from megatron.data.iterator import TimedIterator
from megatron.parallel import collective_device
from megatron.training import checkpointing as ckpt
from megatron.training.reporting import StepReporter
from megatron.training.state import TrainState, rng_state
from megatron.training.step import StepResult, eval_loss, fixed_batch_loss, train_step

LOG = logging.getLogger(__name__)


@dataclass
class StopFlag:
    """Set by a signal handler; read at step boundaries."""

    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum


def _agreed(flag: bool) -> bool:
    """True on every rank if it is true on any rank, so all ranks stop together."""
    if not dist.is_initialized():
        return flag
    import torch

    value = torch.tensor([1 if flag else 0], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def client_state(run: Any, state: TrainState) -> dict[str, Any]:
    """What we add to DeepSpeed's checkpoint so a resume is exact."""
    a = run.args
    extra = {}
    if a.checkpoint_validation_with_forward_pass:
        extra["checkpoint_validation_loss"] = fixed_batch_loss(run)
    return {
        **extra,
        "iteration": state.iteration,
        "train_state": state.to_dict(),
        "rng_state": rng_state(),
        "rng_tracker": run.rng_tracker.get_states(),
        "args": {
            "num_layers": a.num_layers,
            "hidden_size": a.hidden_size,
            "num_attention_heads": a.num_attention_heads,
            "max_position_embeddings": a.max_position_embeddings,
            "make_vocab_size_divisible_by": a.make_vocab_size_divisible_by,
            "padded_vocab_size": run.spec.padded_vocab_size,
            "tokenizer_type": a.tokenizer_type,
            "model_parallel_size": a.model_parallel_size,
        },
    }


def save(run: Any, state: TrainState) -> None:
    a = run.args
    if not a.save:
        return
    ckpt.save_checkpoint(
        run.engine,
        a.save,
        state.iteration,
        client_state(run, state),
        a.config_files,
        is_rank0=run.is_rank0,
        barrier=dist.barrier,
    )
    if run.is_rank0:
        ckpt.prune_checkpoints(a.save, getattr(a, "keep_last_n_checkpoints", None))
    LOG.info("saved checkpoint %s", ckpt.tag_for(state.iteration))


def train(
    run: Any,
    state: TrainState,
    data: Iterator[tuple],
    valid_data: Iterator[tuple] | None,
    metrics: Any,
    tasks: Callable[[Any, int, Any], Any] | None = None,
) -> TrainState:
    """Train from `state.iteration` to `train_iters`; returns the final state.

    `tasks(run, iteration, metrics)`, when given, scores the lm-eval `eval_tasks` at each
    `eval_interval` (see eval_harness.TaskEvaluator).
    """
    a = run.args
    reporter = StepReporter(run, metrics)
    stop = StopFlag()
    stop.install()
    save_at = ckpt.save_iterations(
        a.train_iters, a.checkpoint_factor, a.checkpoint_scale, a.extra_save_iters
    )
    last_saved = state.iteration
    timed = TimedIterator(data)  # the pipeline engine draws its micro-batches through it too
    while state.iteration < a.train_iters:
        reporter.before_step(state.iteration + 1)
        result, seconds, data_seconds = timed_step(run, timed)
        state.iteration += 1
        state.consumed_samples += a.train_batch_size
        _count_skips(state, result)
        reporter.step(state, result, seconds, data_seconds)
        if a.eval_interval and state.iteration % a.eval_interval == 0:
            if valid_data is not None:
                evaluate(run, state, valid_data, metrics, "validation")
            if tasks is not None:
                tasks(run, state.iteration, metrics)
        if state.iteration in save_at:
            save(run, state)
            last_saved = state.iteration
        if _should_stop(run, state, stop):
            break
    reporter.close()
    if last_saved != state.iteration:
        save(run, state)
    return state


def timed_step(run: Any, data: TimedIterator) -> tuple[StepResult, float, float]:
    """One `train_step`; returns its result, its wall seconds and the seconds spent in
    `next(data)` during it (for the data-wait fraction)."""
    waited = data.waited
    start = time.perf_counter()
    result = train_step(run, data)
    return result, time.perf_counter() - start, data.waited - waited


def _count_skips(state: TrainState, result: StepResult) -> None:
    if not result.skipped:
        state.consecutive_skips = 0
        return
    state.skipped_steps += 1
    state.consecutive_skips += 1
    LOG.warning(
        "iteration %d: update skipped (loss %s, non-finite gradients or loss-scale overflow)",
        state.iteration,
        result.loss,
    )


def _should_stop(run: Any, state: TrainState, stop: StopFlag) -> bool:
    a = run.args
    limit = getattr(a, "max_consecutive_skipped_steps", 0) or 0
    reasons = []
    if stop.signum is not None:
        reasons.append(f"received signal {stop.signum}")
    if a.exit_interval and state.iteration % a.exit_interval == 0:
        reasons.append(f"exit_interval {a.exit_interval} reached")
    if limit and state.consecutive_skips >= limit:
        reasons.append(f"{state.consecutive_skips} consecutive non-finite steps")
    if not _agreed(bool(reasons)):
        return False
    LOG.warning("stopping at iteration %d: %s", state.iteration, "; ".join(reasons) or "peer")
    return True


def evaluate(run: Any, state: TrainState, data: Iterator[tuple], metrics: Any, name: str) -> float:
    """Log `{name}/lm_loss` and its perplexity; returns the loss."""
    loss = eval_loss(run, data, run.args.eval_iters)
    ppl = math.exp(min(loss, 20.0))
    metrics.log(state.iteration, {f"{name}/lm_loss": loss, f"{name}/lm_loss_ppl": ppl})
    if run.is_rank0:
        LOG.info("iteration %d: %s loss %.4f, perplexity %.2f", state.iteration, name, loss, ppl)
    return loss
