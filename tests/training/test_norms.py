"""Parameter/gradient norms and the noise-scale logger against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from megatron.model import build_model
from megatron.parallel import ParallelLayout, ProcessGroups
from megatron.training.norms import (
    NoiseScaleLogger,
    NormLogger,
    gather_squares,
    local_squares,
    merge_squares,
    norm_metrics,
)
from tests.distributed import run_distributed
from tests.model.conftest import tiny_spec


def _param(values: list[float], **marks: bool) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.tensor(values))
    for key, value in marks.items():
        setattr(p, key, value)
    return p


def test_param_norms_of_a_linear_layer_are_hand_computed() -> None:
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))  # norm 5
        layer.bias.copy_(torch.tensor([12.0]))  # norm 12
    named = [(n, p.data, p) for n, p in layer.named_parameters()]
    out = norm_metrics(local_squares(named, tp_rank=0), "parameter_norms/", "train/param_norm")
    assert out == pytest.approx(
        {"parameter_norms/weight": 5.0, "parameter_norms/bias": 12.0, "train/param_norm": 13.0}
    )


def test_tp_shards_add_up_and_replicated_tensors_count_once() -> None:
    # Full sharded weight [3, 4] split over two tensor ranks; a replicated bias [2] on both.
    w0, w1 = _param([3.0], model_parallel=True), _param([4.0], model_parallel=True)
    b0, b1 = _param([2.0]), _param([2.0])
    rank0 = local_squares([("w", w0.data, w0), ("b", b0.data, b0)], tp_rank=0)
    rank1 = local_squares([("w", w1.data, w1), ("b", b1.data, b1)], tp_rank=1)
    total = merge_squares([rank0, rank1])
    assert total == pytest.approx({"w": 25.0, "b": 4.0})
    assert norm_metrics(total, "", "all")["all"] == pytest.approx(math.sqrt(29.0))


def test_pipe_tied_copies_and_other_data_parallel_ranks_are_not_counted() -> None:
    tied = _param([5.0], ds_pipe_replicated=True)
    plain = _param([1.0])
    assert local_squares([("t", tied.data, tied), ("p", plain.data, plain)], tp_rank=0) == {
        "p": 1.0
    }
    assert local_squares([("p", plain.data, plain)], tp_rank=0, dp_rank=1) == {}
    assert local_squares([("p", None, plain)], tp_rank=0) == {}


def test_noise_scale_from_two_hand_computed_steps() -> None:
    # B_small = 2, B_big = 4. Step grads [2, 0] then [2, 2]: |G_small|^2 = 8 (last step),
    # |G_big|^2 = |[2, 1]|^2 = 5. |G|^2 = (4*5 - 2*8) / 2 = 2; tr = (8 - 5) / (1/2 - 1/4) = 12.
    logger = NoiseScaleLogger(batch_size=2, n_batches=2)
    assert logger.update({"w": torch.tensor([2.0, 0.0])}) is None
    assert logger.update({"w": torch.tensor([2.0, 2.0])}) == pytest.approx(6.0)
    assert logger.buffer == {}, "the buffer restarts after each estimate"


def test_noise_scale_skips_non_finite_steps_and_rejects_one_batch() -> None:
    logger = NoiseScaleLogger(batch_size=2, n_batches=2, cpu_offload=True)
    logger.update({"w": torch.tensor([float("inf"), 0.0])})
    assert logger.seen == 0 and logger.buffer == {}
    with pytest.raises(ValueError, match="gradient_noise_scale_n_batches"):
        NoiseScaleLogger(batch_size=2, n_batches=1)


class _FakeEngine:
    """The two things NormLogger touches: `module` and `_take_model_step` (which zeroes)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def _take_model_step(self, lr_kwargs: object = None) -> None:
        for p in self.module.parameters():
            p.grad = None


def _run_args(**keys: object) -> SimpleNamespace:
    base = {"log_param_norm": False, "log_grad_norm": False, "log_gradient_noise_scale": False,
            "train_batch_size": 2, "gradient_noise_scale_n_batches": 2,
            "gradient_noise_scale_cpu_offload": False}
    return SimpleNamespace(**{**base, **keys})


def test_grad_norms_are_read_before_the_step_zeroes_them() -> None:
    layer = torch.nn.Linear(2, 1)
    engine = _FakeEngine(layer)
    groups = ProcessGroups.single()
    run = SimpleNamespace(args=_run_args(log_grad_norm=True), engine=engine, groups=groups)
    norms = NormLogger.from_run(run)
    layer.weight.grad = torch.tensor([[6.0, 8.0]])
    layer.bias.grad = torch.tensor([-7.0])
    norms.before_step(will_log=True)
    engine._take_model_step()
    assert layer.weight.grad is None
    assert norms.metrics() == pytest.approx(
        {"gradient_norms/weight": 10.0, "gradient_norms/bias": 7.0}
    )
    norms.before_step(will_log=False)
    engine._take_model_step()
    assert norms.metrics() == {}, "no gradients are kept for steps that are not logged"


def test_nothing_is_built_when_no_key_is_on() -> None:
    run = SimpleNamespace(args=_run_args(), engine=None, groups=ProcessGroups.single())
    assert NormLogger.from_run(run) is None


def test_param_norm_of_the_tiny_gpt_matches_a_flat_reference() -> None:
    model, _ = build_model(tiny_spec(), ProcessGroups.single(), pipe_parallel_size=0)
    run = SimpleNamespace(args=_run_args(log_param_norm=True), engine=SimpleNamespace(
        module=model), groups=ProcessGroups.single())
    out = NormLogger.from_run(run).metrics()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert out["train/param_norm"] == pytest.approx(float(flat.norm()), rel=1e-6)
    name, param = next(iter(model.named_parameters()))
    assert out[f"parameter_norms/{name}"] == pytest.approx(float(param.detach().norm()))


def _tp2_param_norms(rank: int, world_size: int) -> None:
    groups = ProcessGroups.build(ParallelLayout(tp=2, pp=1, dp=1, rank=rank))
    spec = tiny_spec()
    dense, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0)
    sharded, _ = build_model(spec, groups, pipe_parallel_size=0)
    named = [(n, p.data, p) for n, p in sharded.named_parameters()]
    got = gather_squares(local_squares(named, groups.tp.rank, groups.dp.rank))
    for name, param in dense.named_parameters():
        want = float(param.detach().float().pow(2).sum())
        assert got[name] == pytest.approx(want, rel=1e-5), name
    assert set(got) == {n for n, _ in dense.named_parameters()}


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_tp2_param_norms_equal_the_single_process_model() -> None:
    run_distributed(_tp2_param_norms, world_size=2, timeout=100)
