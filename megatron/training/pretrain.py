"""`pretrain(args)`: build the run, resume if there is a checkpoint, train, evaluate."""

from __future__ import annotations

import logging
from typing import Any

from megatron.training import checkpointing as ckpt
from megatron.training.engine import batches, build_data, build_run, shutdown_distributed
from megatron.training.eval_harness import TaskEvaluator, TaskRunner
from megatron.training.loop import evaluate, train
from megatron.training.metrics import MetricsLogger
from megatron.training.sharded_optimizer import ShardedOptimizer
from megatron.training.state import TrainState, set_rng_state
from megatron.training.step import fixed_batch_loss
from megatron.utils.logging import configure_logging
from megatron.utils.tee import tee_output

LOG = logging.getLogger(__name__)


def resume(run: Any) -> TrainState:
    """Load the newest complete checkpoint under `load`, or start fresh and say so."""
    a = run.args
    tag = ckpt.find_loadable_tag(a.load, a.iteration)
    if tag is None:
        if run.is_rank0:
            LOG.info("no checkpoint found under %r: training starts from scratch", a.load)
        return TrainState()
    finetune = bool(a.finetune)
    load_optim = not (a.no_load_optim or finetune)
    _, client = run.engine.load_checkpoint(
        a.load,
        tag=tag,
        load_optimizer_states=load_optim,
        load_lr_scheduler_states=load_optim,
        load_module_only=finetune,
    )
    refresh_masters = getattr(run.engine.optimizer, "refresh_fp32_params", None)
    if not load_optim and refresh_masters is not None:
        # fp32 master weights from the loaded ones, or the first step would put back the
        # masters of the initialisation (DeepSpeed refreshes them only for module-only loads).
        refresh_masters()
    if finetune or client is None:
        LOG.info("loaded weights from %s/%s; starting at iteration 0", a.load, tag)
        return TrainState()
    _validate_forward_pass(run, client, f"{a.load}/{tag}")
    if not a.no_load_rng and "rng_state" in client:
        set_rng_state(client["rng_state"])
        run.rng_tracker.set_states(client["rng_tracker"])
    state = TrainState.from_dict(client.get("train_state", {"iteration": client["iteration"]}))
    LOG.info("resumed from %s/%s at iteration %d", a.load, tag, state.iteration)
    return state


def _validate_forward_pass(run: Any, client: dict, where: str) -> None:
    """With checkpoint_validation_with_forward_pass, the loaded weights must reproduce the
    loss they had on a fixed batch when they were saved."""
    saved = client.get("checkpoint_validation_loss")
    if not run.args.checkpoint_validation_with_forward_pass or saved is None:
        return
    now = fixed_batch_loss(run)
    if abs(now - saved) > 1e-5 * max(1.0, abs(saved)):
        raise ckpt.CheckpointError(
            f"{where}: the loaded model gives loss {now:.6f} on the validation batch, but "
            f"{saved:.6f} when it was saved; the checkpoint does not match this config"
        )
    LOG.info("checkpoint validated: forward pass reproduces loss %.6f", saved)


def pretrain(args: Any, task_runner: TaskRunner | None = None) -> int:
    """Train as the config says; returns the process exit code.

    `task_runner` scores `eval_tasks` with lm-eval at each evaluation (entry points pass
    `eval_tasks.runner.score_decoder`); without one, that runner is looked up by name. A
    run that returns, whatever its code, destroys the process groups
    (`engine.shutdown_distributed`); one that raises leaves them to the interpreter.
    """
    code = _train_and_test(args, task_runner)
    shutdown_distributed()
    return code


def _train_and_test(args: Any, task_runner: TaskRunner | None) -> int:
    tasks = TaskEvaluator.from_args(args, task_runner)
    run = build_run(args)
    if args.log_dir:
        tee_output(args.log_dir, run.groups.layout.rank)
    configure_logging(rank=run.groups.layout.rank)
    if isinstance(run.engine.optimizer, ShardedOptimizer) and run.is_rank0:
        LOG.info("optimizer step sharded over %d data-parallel ranks through shared memory",
                 run.engine.optimizer.plan.dp.size)
    state = resume(run)
    metrics = MetricsLogger.from_args(
        args, rank=0 if run.is_rank0 else 1, all_config=args.all_config
    )
    try:
        train_iter, valid, test = build_data(run, state.consumed_samples)
        valid_iter = batches(run, valid, 0, cycle=True) if valid is not None else None
        state = train(run, state, train_iter, valid_iter, metrics, tasks)
        limit = args.max_consecutive_skipped_steps
        if limit and state.consecutive_skips >= limit:
            LOG.error(
                "stopped: %d consecutive updates skipped for non-finite gradients; the last "
                "good weights were saved at iteration %d",
                state.consecutive_skips,
                state.iteration,
            )
            return 1
        if valid_iter is not None and args.eval_iters:
            evaluate(run, state, valid_iter, metrics, "validation")
        if test is not None and args.eval_iters:
            evaluate(run, state, batches(run, test, 0, cycle=True), metrics, "test")
        if tasks is not None:
            tasks(run, state.iteration, metrics)  # skipped if just scored at this iteration
    finally:
        metrics.close()
    return 0
