"""LR schedules against hand-computed values (FORMATS.md "Learning rate")."""

from types import SimpleNamespace

import pytest
import torch

from megatron.training.lr_schedules import AnnealingLR, LRSchedule, LRScheduleError

# lr 1.0, floor 0.1, warmup 10 iterations, decay ends at 110: the decay spans 100 iterations.
BASE = {"lr": 1.0, "min_lr": 0.1, "warmup_iters": 10, "decay_iters": 110}
COS_QUARTER = 0.1 + 0.45 * (1 + 0.7071067811865476)  # cos(pi/4) = 0.70710678...

CASES = [
    # style, iteration, expected
    ("linear", 0, 0.1),  # warmup uses max(1, n) / W = 1/10
    ("linear", 5, 0.5),
    ("linear", 10, 1.0),
    ("linear", 35, 0.75),  # t = 25/100
    ("linear", 60, 0.5),
    ("linear", 110, 0.1),  # 0 floored at min_lr
    ("linear", 500, 0.1),
    ("cosine", 5, 0.5),
    ("cosine", 35, COS_QUARTER),
    ("cosine", 60, 0.55),  # 0.1 + 0.9/2 * (1 + cos(pi/2))
    ("cosine", 110, 0.1),
    ("cosine", 200, 0.1),  # GPT-NeoX would rise to ~0.978 here; we hold at min_lr
    ("exponential", 5, 0.5),
    ("exponential", 60, 0.7071588),  # exp(-0.3465)
    ("exponential", 110, 0.5000736),  # exp(-0.693)
    ("exponential", 1000, 0.5000736),  # clamped after the decay ends
    ("constant", 3, 0.3),
    ("constant", 60, 1.0),
    ("constant", 10_000, 1.0),
]


@pytest.mark.parametrize(("style", "iteration", "expected"), CASES)
def test_lr_at_matches_hand_computed(style: str, iteration: int, expected: float) -> None:
    schedule = LRSchedule(**BASE, style=style)
    assert schedule.lr_at(iteration) == pytest.approx(expected, rel=1e-6)


def test_no_warmup_starts_at_peak_and_min_lr_zero_reaches_zero() -> None:
    schedule = LRSchedule(lr=2.0, min_lr=0.0, warmup_iters=0, decay_iters=4, style="linear")
    assert [schedule.lr_at(n) for n in range(6)] == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]


def test_warmup_longer_than_decay_holds_end_value_after_warmup() -> None:
    schedule = LRSchedule(lr=1.0, min_lr=0.2, warmup_iters=8, decay_iters=4, style="cosine")
    assert schedule.lr_at(4) == pytest.approx(0.5)
    assert schedule.lr_at(9) == pytest.approx(0.2)


def test_fractional_warmup_never_exceeds_peak() -> None:
    schedule = LRSchedule(lr=1.0, warmup_iters=0.5, decay_iters=10, style="constant")
    assert schedule.lr_at(0) == 1.0


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"style": "cosine_restarts"}, "lr_decay_style='cosine_restarts'"),
        ({"min_lr": 2.0}, "min_lr=2.0 > lr=1.0"),
        ({"decay_iters": 0}, "lr_decay_iters=0"),
        ({"warmup_iters": -1}, "warmup iterations=-1"),
    ],
)
def test_invalid_schedule_names_the_setting(bad: dict, needle: str) -> None:
    with pytest.raises(LRScheduleError, match=needle.replace("(", r"\(")):
        LRSchedule(**{**BASE, "style": "linear", **bad})


def _args(**kw: object) -> SimpleNamespace:
    base = dict(lr=0.001, min_lr=1e-5, warmup=0.01, lr_decay_iters=None,
                lr_decay_fraction=None, train_iters=1000, lr_decay_style="Cosine")
    return SimpleNamespace(**{**base, **kw})


def test_from_args_uses_train_iters_and_warmup_fraction() -> None:
    s = LRSchedule.from_args(_args())
    assert (s.lr, s.min_lr, s.decay_iters, s.warmup_iters, s.style) == (
        0.001, 1e-5, 1000, 10.0, "cosine")


def test_from_args_decay_iters_then_fraction_precedence() -> None:
    assert LRSchedule.from_args(_args(lr_decay_iters=300, lr_decay_fraction=0.5)).decay_iters == 300
    s = LRSchedule.from_args(_args(lr_decay_fraction=0.333))
    assert (s.decay_iters, s.warmup_iters) == (333, pytest.approx(3.33))


def test_from_args_rejects_warmup_outside_unit_interval() -> None:
    with pytest.raises(LRScheduleError, match="warmup=5"):
        LRSchedule.from_args(_args(warmup=5))


def _optimizer() -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr=123.0)


def test_annealing_sets_every_group_with_lr_scale() -> None:
    opt = _optimizer()
    sched = AnnealingLR(opt, LRSchedule(**BASE, style="linear"))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.05])
    for _ in range(5):
        sched.step()
    assert sched.num_iters == 5
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.25])
    sched.step(60)
    assert sched.get_last_lr() == pytest.approx([0.5, 0.25])


def test_state_dict_has_gpt_neox_keys_and_round_trips() -> None:
    sched = AnnealingLR(_optimizer(), LRSchedule(**BASE, style="cosine"), start_iter=35)
    assert sched.state_dict() == {"start_lr": 1.0, "min_lr": 0.1, "warmup_iter": 10,
                                  "end_iter": 110, "decay_style": "cosine", "num_iters": 35}
    other = AnnealingLR(_optimizer(), LRSchedule(**BASE, style="cosine"))
    other.load_state_dict(sched.state_dict())
    assert other.num_iters == 35
    assert other.get_lr() == pytest.approx(COS_QUARTER)


def _saved() -> dict:
    return {"start_lr": 2.0, "min_lr": 0.0, "warmup_iter": 0, "end_iter": 4,
            "decay_style": "linear", "num_iters": 1}


def test_use_checkpoint_lr_scheduler_takes_checkpoint_values() -> None:
    opt = _optimizer()
    sched = AnnealingLR(opt, LRSchedule(**BASE, style="cosine"))
    sched.load_state_dict(_saved())
    assert sched.get_lr() == pytest.approx(1.5)  # 2.0 * (4 - 1) / 4
    assert opt.param_groups[1]["lr"] == pytest.approx(0.75)


def test_override_keeps_config_values_but_resumes_iteration() -> None:
    sched = AnnealingLR(_optimizer(), LRSchedule(**BASE, style="linear"),
                        use_checkpoint_lr_scheduler=False, override_lr_scheduler=True)
    sched.load_state_dict({**_saved(), "num_iters": 60})
    assert sched.schedule.lr == 1.0
    assert sched.get_lr() == pytest.approx(0.5)


def test_mismatch_without_either_flag_is_an_error() -> None:
    sched = AnnealingLR(_optimizer(), LRSchedule(**BASE, style="linear"),
                        use_checkpoint_lr_scheduler=False)
    with pytest.raises(LRScheduleError, match="start_lr=2.0"):
        sched.load_state_dict(_saved())


def test_both_flags_is_an_error() -> None:
    with pytest.raises(LRScheduleError, match="both true"):
        AnnealingLR(_optimizer(), LRSchedule(**BASE), override_lr_scheduler=True)



def test_from_args_reads_resume_flags_with_gpt_neox_defaults() -> None:
    opt = _optimizer()
    sched = AnnealingLR.from_args(opt, _args(lr_decay_style="linear"))
    assert (sched.use_checkpoint_lr_scheduler, sched.override_lr_scheduler) == (False, False)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0001)  # 0.001 * 1 / 10 warmup iters
    with pytest.raises(LRScheduleError, match="start_lr=2.0"):
        sched.load_state_dict(_saved())
    flagged = AnnealingLR.from_args(opt, _args(use_checkpoint_lr_scheduler=True), start_iter=3)
    assert flagged.num_iters == 3
    flagged.load_state_dict(_saved())
    assert flagged.get_lr() == pytest.approx(1.5)
