"""The training layer: engine wiring, the loop, checkpoints, schedules, metrics."""

from __future__ import annotations

from typing import Any


def pretrain(args: Any) -> int:
    """Train as `args` says; imported lazily so `import megatron.training` stays light."""
    from megatron.training.pretrain import pretrain as _pretrain

    return _pretrain(args)


__all__ = ["pretrain"]
