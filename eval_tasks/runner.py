"""Run lm-eval tasks on an adapter and write the results as JSON.

Tasks come from the harness registry or from ``include_path`` (GPT-NeoX-style local task
folders, e.g. YAML with ``dataset_path: json``). Nothing is fetched: a task whose data is
not available offline fails with an ``EvalError`` naming it. Every document is scored
unless ``limit`` is set.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM

LOG = logging.getLogger(__name__)

OFFLINE_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, FileNotFoundError, OSError)


class EvalError(Exception):
    """An evaluation cannot run: unknown task, or task data missing offline."""


def resolve_tasks(tasks: list[str], include_path: str | None) -> tuple[list[str], list[str]]:
    """Task names and task folders from ``eval_tasks`` entries.

    An entry that is an existing task YAML file (``path/to/task.yaml``) names the task in
    its ``task:`` line and adds its folder to the search path, so local tasks work from the
    config alone; every other entry is a task name.

    Raises:
        EvalError: for a YAML file without a ``task:`` line, or a missing include folder.
    """
    folders = [include_path] if include_path else []
    names = []
    for entry in tasks:
        path = Path(entry)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            match = re.search(r"^task:\s*['\"]?([^'\"\s#]+)", path.read_text(), re.MULTILINE)
            if match is None:
                raise EvalError(f"eval_tasks entry {entry!r} is a YAML file without a "
                                "'task: NAME' line")
            names.append(match.group(1))
            folders.append(str(path.parent))
        else:
            names.append(entry)
    for folder in folders:
        if not Path(folder).is_dir():
            raise EvalError(f"eval_tasks_path = {folder!r} is not a folder of task YAMLs")
    return names, list(dict.fromkeys(folders))


def task_manager_for(tasks: list[str], include_path: list[str]) -> Any:
    """A ``TaskManager`` that knows ``tasks``.

    Indexing lm-eval's thousands of built-in task YAMLs takes tens of seconds, so when every
    task is found in the ``include_path`` folders alone the built-in index is skipped.
    """
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
        return TaskManager(include_path=include_path)
    return TaskManager()


def check_task_names(tasks: list[str], manager: Any) -> None:
    """Raise ``EvalError`` for names neither the registry nor ``include_path`` knows."""
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hints = {t: difflib.get_close_matches(t, known, n=3) for t in unknown}
        raise EvalError(f"unknown eval_tasks {unknown}; closest known names: {hints}; local "
                        "tasks need their folder in eval_tasks_path")


def _offline_failure(tasks: list[str], err: BaseException) -> EvalError:
    return EvalError(f"eval_tasks {tasks}: task data could not be loaded offline "
                     f"(HF_DATASETS_OFFLINE=1, nothing is downloaded): {type(err).__name__}: "
                     f"{err}. Put the dataset in the Hugging Face cache first, or use a local "
                     "task (dataset_path: json with data_files) found through eval_tasks_path")


def _is_offline_error(err: BaseException) -> bool:
    return isinstance(err, OFFLINE_ERRORS) or type(err).__name__ in (
        "DatasetNotFoundError", "LocalEntryNotFoundError", "OfflineModeIsEnabled")


@contextmanager
def _one_process_view() -> Iterator[None]:
    """Hide the launcher's ``LOCAL_RANK`` from lm-eval for the duration.

    Every worker runs the harness as a single process (the adapter shares the requests among
    replicas itself), but lm-eval returns no results on a process whose ``LOCAL_RANK`` is not
    0, so with two workers on a node the second one would get None.
    """
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = saved


def evaluate_tasks(adapter: LM, tasks: list[str], *, include_path: str | None = None,
                   limit: int | None = None, bootstrap_iters: int = 100000,
                   seed: int = 1234) -> dict[str, Any]:
    """Score ``tasks`` (names or task YAML paths) with ``adapter``.

    Returns lm-eval's results dict (its JSON-able parts: results, versions, n-shot, configs,
    n-samples).
    """
    from lm_eval.evaluator import simple_evaluate

    if not tasks:
        raise EvalError("no eval_tasks given; name lm-eval tasks (e.g. lambada_openai)")
    tasks, folders = resolve_tasks(tasks, include_path)
    manager = task_manager_for(tasks, folders)
    check_task_names(tasks, manager)
    try:
        with _one_process_view():
            out = simple_evaluate(model=adapter, tasks=list(tasks), task_manager=manager,
                                  limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    except Exception as err:
        if _is_offline_error(err):
            raise _offline_failure(tasks, err) from err
        raise
    return {k: out[k] for k in ("results", "versions", "n-shot", "configs", "n-samples")
            if k in out}


def results_path(prefix: str, now: float | None = None) -> Path:
    """``<prefix>_eval_results_<timestamp>.json``, or ``eval_results_<timestamp>.json``."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(now))
    return Path(f"{prefix}_eval_results_{stamp}.json" if prefix else
                f"eval_results_{stamp}.json")


def write_results(results: dict[str, Any], prefix: str) -> Path:
    """Write the results JSON next to ``prefix`` and log each task's metrics."""
    path = results_path(prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    for task, metrics in results.get("results", {}).items():
        LOG.info("%s: %s", task, {k: v for k, v in metrics.items() if k != "alias"})
    LOG.info("wrote evaluation results to %s", path)
    return path


def score_decoder(decoder: Any, tokenizer: Any, tp: Any, dp: Any, args: Any) -> dict[str, Any]:
    """Score ``eval_tasks`` through ``decoder`` (the ``TaskRunner`` that training uses).

    Args:
        decoder: the model's step interface (``megatron.inference.Decoder``).
        tokenizer: ``tokenize``, ``detokenize``, ``eod``.
        tp: the model's tensor-parallel group; its ranks share sampled tokens.
        dp: the group whose replicas share the requests.
        args: ``eval_tasks``, ``eval_tasks_path``, ``eval_task_limit``, ``seed``,
            ``seq_length``, ``train_micro_batch_size_per_gpu``.
    """
    from eval_tasks.eval_adapter import NeoXEvalAdapter
    from megatron.inference.setup import tp_sync

    batch = int(getattr(args, "train_micro_batch_size_per_gpu", None) or 1)
    adapter = NeoXEvalAdapter(decoder, tokenizer, max_length=int(args.seq_length),
                              batch_size=batch, dp=dp,
                              generator=torch.Generator().manual_seed(int(args.seed)),
                              sync=tp_sync(tp))
    return evaluate_tasks(adapter, list(getattr(args, "eval_tasks", None) or []),
                          include_path=getattr(args, "eval_tasks_path", None),
                          limit=getattr(args, "eval_task_limit", None), seed=int(args.seed))


def loaded_iteration(args: Any) -> int:
    """The iteration of the checkpoint evaluate.py scores (0 without one)."""
    from megatron.training.checkpointing import find_loadable_tag, iteration_of

    tag = find_loadable_tag(args.load, getattr(args, "iteration", None)) if args.load else None
    return (iteration_of(tag) or 0) if tag else 0


def log_results(results: dict[str, Any], args: Any, iteration: int) -> dict[str, float]:
    """Send the task metrics to the run's sinks (TensorBoard, W&B, metrics.jsonl, console).

    Names are ``eval/<task>/<metric>`` at the checkpoint's iteration, as during training.
    """
    from megatron.training.eval_harness import task_metrics
    from megatron.training.metrics import MetricsLogger

    values = task_metrics(results)
    metrics = MetricsLogger.from_args(args, rank=0, all_config=getattr(args, "all_config", None))
    try:
        metrics.log(iteration, values)
    finally:
        metrics.close()
    return values


def run_from_args(args: Any) -> dict[str, Any]:
    """evaluate.py's worker: load the model, score ``eval_tasks``; rank 0 writes the JSON
    and logs the metrics to the configured sinks."""
    from megatron.inference import start_inference

    im = start_inference(args)
    results = score_decoder(im.decoder(), im.tokenizer, im.groups.tp, im.groups.dp, args)
    if im.is_rank0:
        write_results(results, getattr(args, "eval_results_prefix", "") or "")
        log_results(results, args, loaded_iteration(args))
    return results
