"""lm-evaluation-harness tasks during training: ``eval_tasks`` scored at each evaluation.

At every ``eval_interval`` (and once more at the end of training) the model being trained
is scored on ``eval_tasks`` through a ``Decoder`` over the live module, switched to eval
mode for the duration and run under ``no_grad``. The results go to the run's
``MetricsLogger`` as ``eval/<task>/<metric>`` and rank 0 writes them as JSON next to
``eval_results_prefix`` (one file per iteration).

The harness adapter lives in the ``eval_tasks`` package, which sits above ``megatron`` in
the layering; it reaches this module as a ``TaskRunner`` passed in by the caller.
A pipelined engine (``pipe_parallel_size >= 1``) is not scored: its layers are spread over
stages, so the tasks are skipped with one warning.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron.inference.decoder import CachedDecoder, Decoder, RecomputeDecoder
from megatron.parallel.groups import Group

LOG = logging.getLogger(__name__)

TaskRunner = Callable[[Decoder, Any, Group, Group, Any], dict[str, Any]]
"""``runner(decoder, tokenizer, tp, dp, args) -> lm-eval results`` (a dict with "results").

``tp`` is the model's tensor-parallel group (its ranks share sampled tokens), ``dp`` the
group whose replicas share the requests; ``args`` supplies ``eval_tasks``,
``eval_tasks_path``, ``eval_task_limit``, ``seed`` and the micro batch size.
"""

PIPE_UNSUPPORTED = "eval_tasks during training needs pipe_parallel_size 0; skipping them"


def task_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """lm-eval's ``results`` section as flat ``eval/<task>/<metric>`` numbers.

    lm-eval keys metrics as ``<metric>,<filter>``; the default filter ``none`` is dropped
    and any other is kept after an underscore (``exact_match_strict-match``). Values that
    are not finite numbers (aliases, ``"N/A"`` standard errors) are left out.
    """
    out: dict[str, float] = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            metric, _, flt = key.partition(",")
            name = metric if flt in ("", "none") else f"{metric}_{flt}"
            out[f"eval/{task}/{name}"] = float(value)
    return out


def results_file(prefix: str, iteration: int, log_dir: str | None = None) -> Path:
    """``<prefix>_eval_results_iter_<N>.json``; without a prefix, under ``log_dir`` (or cwd)."""
    name = f"eval_results_iter_{iteration:07d}.json"
    if prefix:
        return Path(f"{prefix}_{name}")
    return Path(log_dir) / name if log_dir else Path(name)


def write_iteration_results(results: Mapping[str, Any], path: Path, iteration: int) -> Path:
    """Write ``results`` plus the iteration they belong to as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"iteration": iteration, **results}, indent=2, default=str))
    return path


@contextmanager
def live_decoder(module: torch.nn.Module, tp: Group, vocab_size: int,
                 recompute: bool = False) -> Iterator[Decoder]:
    """A decoder over ``module`` in eval mode; the previous train/eval mode is restored after.

    Eval mode turns dropout off and makes the model return logits even when the loss
    function would otherwise apply the output head itself.
    """
    was_training = module.training
    module.eval()
    cls = RecomputeDecoder if recompute else CachedDecoder
    try:
        with torch.no_grad():
            yield cls(module, tp, vocab_size)
    finally:
        module.train(was_training)


def scoring_group(run: Any) -> Group:
    """The data-parallel group that shares the requests.

    Under ZeRO stage 3 every forward pass gathers parameters from all data-parallel
    ranks, so they must all run the same passes: each rank then scores every request.
    """
    stage = int((run.args.zero_optimization or {}).get("stage", 0) or 0)
    return Group() if stage >= 3 else run.groups.dp


def needs_recompute(run: Any) -> bool:
    """Full forward passes instead of the KV cache: when asked (``recompute``), or where the
    cache does not apply (sequence parallelism; ZeRO-3's partitioned parameters)."""
    a = run.args
    zero3 = int((a.zero_optimization or {}).get("stage", 0) or 0) >= 3
    return bool(getattr(a, "recompute", False) or a.sequence_parallel or zero3)


@dataclass
class TaskEvaluator:
    """Runs ``eval_tasks`` on a training ``Run`` and reports the results.

    Args:
        runner: scores the tasks through a decoder (see ``TaskRunner``).
        last_iteration: the iteration last scored, so the end of training does not score
            the same weights twice.
    """

    runner: TaskRunner
    last_iteration: int | None = None
    warned: bool = False

    @classmethod
    def from_args(cls, args: Any, runner: TaskRunner | None = None) -> TaskEvaluator | None:
        """An evaluator when ``eval_tasks`` is set (else None).

        ``runner`` comes from the entry point (``train.py`` passes
        ``eval_tasks.runner.score_decoder``): ``eval_tasks`` sits above ``megatron``.
        """
        if not getattr(args, "eval_tasks", None):
            return None
        if runner is None:
            raise ValueError(
                "eval_tasks is set but no lm-eval runner was given to pretrain(); "
                "train.py passes eval_tasks.runner.score_decoder"
            )
        return cls(runner)

    def __call__(self, run: Any, iteration: int, metrics: Any) -> dict[str, float]:
        """Score the tasks at ``iteration``; returns the logged ``eval/...`` values."""
        if run.is_pipe:
            if not self.warned and run.is_rank0:
                LOG.warning(PIPE_UNSUPPORTED)
            self.warned = True
            return {}
        if self.last_iteration == iteration:
            return {}
        self.last_iteration = iteration
        a = run.args
        with live_decoder(run.engine.module, run.groups.tp, run.tokenizer.vocab_size,
                          needs_recompute(run)) as decoder:
            results = self.runner(decoder, run.tokenizer, run.groups.tp, scoring_group(run), a)
        values = task_metrics(results)
        metrics.log(iteration, values)
        if run.is_rank0:
            path = results_file(a.eval_results_prefix or "", iteration, a.log_dir)
            write_iteration_results(results, path, iteration)
            LOG.info("iteration %d: eval_tasks %s; results in %s", iteration, values, path)
        return values
