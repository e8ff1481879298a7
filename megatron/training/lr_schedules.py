"""Learning-rate schedules with GPT-NeoX's AnnealingLR semantics, clamped.

With n the iteration, D the decay iterations and W = warmup * D the warmup iterations:

* warmup (n <= W): ``lr * max(1, n) / W`` (capped at lr);
* then progress ``t = clamp((n - W) / (D - W), 0, 1)`` and
  ``linear: lr * (1 - t)``, ``cosine: min_lr + (lr - min_lr) / 2 * (1 + cos(pi t))``,
  ``exponential: lr * exp(-0.693 t)``, ``constant: lr``;
* every value is floored at ``min_lr``.

GPT-NeoX does not clamp ``t``, so its cosine rises again after D; ours holds at the end
value. :class:`AnnealingLR` keeps GPT-NeoX's checkpoint keys so either side can resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from megatron.utils.logging import get_logger

log = get_logger(__name__)

Style = Literal["constant", "linear", "cosine", "exponential"]


class LRScheduleError(ValueError):
    """A schedule setting or a checkpointed schedule is invalid or inconsistent."""


def _linear(t: float, lr: float, min_lr: float) -> float:
    return lr * (1.0 - t)


def _cosine(t: float, lr: float, min_lr: float) -> float:
    return min_lr + (lr - min_lr) / 2.0 * (1.0 + math.cos(math.pi * t))


def _exponential(t: float, lr: float, min_lr: float) -> float:
    return lr * math.exp(-0.693 * t)  # exp(-0.693) ~ 1/2: halves over the decay


def _constant(t: float, lr: float, min_lr: float) -> float:
    return lr


DECAY_STYLES: dict[str, Callable[[float, float, float], float]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "exponential": _exponential,
}


@dataclass(frozen=True)
class LRSchedule:
    """A pure ``iteration -> learning rate`` map.

    Attributes:
        lr: peak learning rate, reached at the end of warmup.
        min_lr: floor for every value.
        warmup_iters: warmup length in iterations (may be fractional, as GPT-NeoX's is).
        decay_iters: iteration where the decay ends (D); warmup counts inside it.
        style: one of :data:`DECAY_STYLES`.
    """

    lr: float
    min_lr: float = 0.0
    warmup_iters: float = 0.0
    decay_iters: int = 1
    style: Style = "linear"

    def __post_init__(self) -> None:
        problems = []
        if self.style not in DECAY_STYLES:
            expected = sorted(DECAY_STYLES)
            problems.append(f"lr_decay_style={self.style!r} (expected one of {expected})")
        if self.lr < 0 or self.min_lr < 0:
            problems.append(f"lr={self.lr}, min_lr={self.min_lr} (expected >= 0)")
        if self.min_lr > self.lr:
            problems.append(f"min_lr={self.min_lr} > lr={self.lr} (expected min_lr <= lr)")
        if self.warmup_iters < 0:
            problems.append(f"warmup iterations={self.warmup_iters} (expected >= 0)")
        if self.decay_iters < 1:
            problems.append(f"lr_decay_iters={self.decay_iters} (expected >= 1)")
        if problems:
            raise LRScheduleError("invalid learning-rate schedule: " + "; ".join(problems))

    @classmethod
    def from_args(cls, args: Any) -> LRSchedule:
        """Build from GPT-NeoX keys (duck-typed, so NeoXArgs or any namespace works).

        ``decay_iters`` is ``lr_decay_iters`` if set, else ``floor(train_iters *
        lr_decay_fraction)`` if set, else ``train_iters`` (at least 1); ``warmup`` is a
        fraction of it, as in GPT-NeoX.
        """
        decay_iters = getattr(args, "lr_decay_iters", None)
        fraction = getattr(args, "lr_decay_fraction", None)
        train_iters = getattr(args, "train_iters", None)
        if decay_iters is None:
            if train_iters is None:
                raise LRScheduleError("set train_iters or lr_decay_iters to size the LR decay")
            decay_iters = train_iters if fraction is None else math.floor(train_iters * fraction)
        decay_iters = max(1, int(decay_iters))
        warmup = getattr(args, "warmup", 0.0) or 0.0
        if not 0.0 <= warmup <= 1.0:
            raise LRScheduleError(f"warmup={warmup}: expected a fraction of the decay in [0, 1]")
        lr = getattr(args, "lr", None)
        if lr is None:
            raise LRScheduleError("lr is not set: the schedule needs a peak learning rate")
        style = str(getattr(args, "lr_decay_style", None) or "linear").lower()
        return cls(
            lr=float(lr),
            min_lr=float(getattr(args, "min_lr", 0.0) or 0.0),
            warmup_iters=warmup * decay_iters,
            decay_iters=decay_iters,
            style=style,  # type: ignore[arg-type]
        )

    def lr_at(self, iteration: int) -> float:
        """The learning rate for ``iteration`` (0-based count of steps already taken)."""
        w, d = self.warmup_iters, self.decay_iters
        if w > 0 and iteration <= w:
            value = min(self.lr, self.lr * max(1, iteration) / w)
        else:
            t = 1.0 if d <= w else min(max((iteration - w) / (d - w), 0.0), 1.0)
            value = DECAY_STYLES[self.style](t, self.lr, self.min_lr)
        return max(value, self.min_lr)


# Checkpoint keys (GPT-NeoX's names) and the schedule field each one maps to.
_STATE_FIELDS = {
    "start_lr": ("lr", "learning rate"),
    "min_lr": ("min_lr", "minimum learning rate"),
    "warmup_iter": ("warmup_iters", "warmup iterations"),
    "end_iter": ("decay_iters", "total number of iterations"),
    "decay_style": ("style", "decay style"),
}


class AnnealingLR:
    """Sets every param group's ``lr`` from an :class:`LRSchedule`; DeepSpeed calls ``step()``.

    A group's ``lr`` is the schedule's value times its ``lr_scale`` (default 1), so groups can
    train at a fixed multiple of the base rate.

    Args:
        optimizer: anything with ``param_groups`` (a torch or DeepSpeed optimizer).
        schedule: the schedule from the config.
        start_iter: iteration to start from (the rate is set for it immediately).
        use_checkpoint_lr_scheduler: on load, take the checkpoint's schedule settings.
        override_lr_scheduler: on load, keep the config's settings (only the step count loads).
    """

    def __init__(
        self,
        optimizer: Any,
        schedule: LRSchedule,
        start_iter: int = 0,
        *,
        use_checkpoint_lr_scheduler: bool = True,
        override_lr_scheduler: bool = False,
    ) -> None:
        if override_lr_scheduler and use_checkpoint_lr_scheduler:
            raise LRScheduleError(
                "override_lr_scheduler and use_checkpoint_lr_scheduler are both true: set "
                "use_checkpoint_lr_scheduler: false to override the checkpoint's schedule"
            )
        self.optimizer = optimizer
        self.schedule = schedule
        self.use_checkpoint_lr_scheduler = use_checkpoint_lr_scheduler
        self.override_lr_scheduler = override_lr_scheduler
        self.num_iters = start_iter
        self.step(start_iter)
        log.info("learning rate decay style: %s", schedule.style)

    @classmethod
    def from_args(cls, optimizer: Any, args: Any, start_iter: int = 0) -> AnnealingLR:
        """Schedule and resume flags from GPT-NeoX keys (duck-typed).

        ``use_checkpoint_lr_scheduler`` and ``override_lr_scheduler`` default to False as in
        GPT-NeoX's config, so a checkpoint whose schedule differs from the config is an error
        unless one of them is set.
        """
        return cls(
            optimizer,
            LRSchedule.from_args(args),
            start_iter,
            use_checkpoint_lr_scheduler=bool(getattr(args, "use_checkpoint_lr_scheduler", False)),
            override_lr_scheduler=bool(getattr(args, "override_lr_scheduler", False)),
        )

    def get_lr(self) -> float:
        """The base learning rate at the current iteration (before any ``lr_scale``)."""
        return self.schedule.lr_at(self.num_iters)

    def get_last_lr(self) -> list[float]:
        """Per-group learning rates, as torch schedulers report them."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, step_num: int | None = None) -> None:
        """Advance one iteration (or jump to ``step_num``) and write each group's ``lr``."""
        self.num_iters = self.num_iters + 1 if step_num is None else step_num
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def state_dict(self) -> dict[str, Any]:
        """GPT-NeoX's scheduler state keys, so checkpoints interchange."""
        state = {key: getattr(self.schedule, field) for key, (field, _) in _STATE_FIELDS.items()}
        state["num_iters"] = self.num_iters
        return state

    def _resolve(self, key: str, saved: Any) -> Any:
        """Pick the config's or the checkpoint's value for one setting, per the two flags."""
        field, label = _STATE_FIELDS[key]
        ours = getattr(self.schedule, field)
        if self.override_lr_scheduler:
            log.info("overriding the checkpoint's %s with %s", label, ours)
            return ours
        if not self.use_checkpoint_lr_scheduler and saved != ours:
            raise LRScheduleError(
                f"checkpoint {label} ({key}={saved!r}) differs from the config ({ours!r}); set "
                "use_checkpoint_lr_scheduler: true to take the checkpoint's value or "
                "override_lr_scheduler: true to keep the config's"
            )
        log.info("using the checkpoint's %s: %s", label, saved)
        return saved

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step count and, per the flags, the schedule settings."""
        missing = sorted((set(_STATE_FIELDS) | {"num_iters"}) - set(state))
        if missing:
            raise LRScheduleError(f"LR scheduler state is missing keys {missing}")
        values = {f: self._resolve(key, state[key]) for key, (f, _) in _STATE_FIELDS.items()}
        values["style"] = str(values["style"]).lower()
        values["decay_iters"] = int(values["decay_iters"])
        self.schedule = LRSchedule(**values)
        self.step(int(state["num_iters"]))
