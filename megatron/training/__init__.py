"""The training layer: engine wiring, the loop, checkpoints, schedules, metrics."""

from __future__ import annotations

from typing import Any


def pretrain(args: Any, task_runner: Any = None) -> int:
    """Train as `args` says; imported lazily so `import megatron.training` stays light.

    `task_runner` scores `eval_tasks` with lm-evaluation-harness at each evaluation.
    """
    from megatron.training.pretrain import pretrain as _pretrain

    return _pretrain(args, task_runner=task_runner)


__all__ = ["pretrain"]
