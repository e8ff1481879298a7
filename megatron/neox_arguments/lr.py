"""LR scheduler group: warmup and decay of the learning rate."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class LRArgs:
    """Shape of the learning-rate schedule (the peak value is `lr`)."""

    lr_decay_style: Literal[
        "constant", "linear", "cosine", "exponential", "infinite_cosine", "infinite_inv_sqrt"
    ] = "linear"
    """Decay curve after warmup."""

    lr_decay_iters: int | None = None
    """Iterations over which the LR decays; None means train_iters (or lr_decay_fraction)."""

    lr_decay_fraction: float | None = None
    """Decay over this fraction of train_iters instead of a fixed lr_decay_iters."""

    min_lr: float = 0.0
    """Floor of the learning rate; the schedule never goes below it."""

    warmup: float = 0.01
    """Fraction of the decay iterations spent linearly warming up (0.01 = 1%)."""

    override_lr_scheduler: bool = False
    """On resume, take the schedule from this config and ignore the checkpoint's."""

    use_checkpoint_lr_scheduler: bool = False
    """On resume, take the schedule from the checkpoint and ignore this config's."""

    constant_lr: float = 0.0
    """Infinite schedules: the LR held during the constant phase."""

    constant_iters_percent: float = 0.0
    """Infinite schedules: fraction of iterations spent at constant_lr."""

    cooldown_iters_percent: float = 0.0
    """Infinite schedules: fraction of iterations spent cooling down to constant_lr."""

    timescale: float = 1.0
    """infinite_inv_sqrt schedule: time scale of the inverse-square-root decay."""
