"""MasterWeights: bf16 weights updated through fp32 masters, checked against a plain fp32
AdamW fed the same gradients, and against DeepSpeed's checkpoint layout for its wrapper."""

from __future__ import annotations

import copy

import pytest
import torch

from megatron.training.master_weights import (
    MasterWeights,
    cast_parameters_,
    why_not_master_weights,
)

BF16_ULP = 2.0**-8  # relative spacing of bf16 values


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    model.register_buffer("kept_fp32", torch.arange(4, dtype=torch.float32))
    return model


def groups_of(model: torch.nn.Module) -> list[dict]:
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights}, {"params": biases, "weight_decay": 0.0}]


def adamw(groups: list[dict]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, fused=True)


def bf16_setup(clip: float = 0.0) -> tuple[torch.nn.Module, MasterWeights]:
    model = tiny_model()
    cast_parameters_(model, torch.bfloat16)
    return model, MasterWeights(groups_of(model), adamw, clip=clip)


def fp32_copies(model: torch.nn.Module) -> tuple[list, list, list[dict]]:
    """The model's parameters in ``groups_of`` order, fp32 copies of them, and those copies
    grouped as ``groups_of`` groups the parameters: a reference optimizer's input."""
    flat = [p for g in groups_of(model) for p in g["params"]]  # weights, then biases
    copies = [p.detach().float().clone().requires_grad_(True) for p in flat]
    return flat, copies, [{"params": copies[:2]}, {"params": copies[2:], "weight_decay": 0.0}]


def backward(model: torch.nn.Module, step: int, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(64, 16, generator=gen).to(torch.bfloat16)
    (model(x).float().square().mean() * scale).backward()


def test_parameters_are_cast_and_buffers_are_not() -> None:
    model = tiny_model()
    tied = model[0].weight
    cast_parameters_(model, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.kept_fp32.dtype == torch.float32
    assert model[0].weight is tied  # the Parameter object survives (tying, optimizer groups)


def test_updates_match_fp32_adamw_on_the_same_gradients() -> None:
    """Five clipped steps: the masters follow a plain (unfused, loop) fp32 AdamW given the
    fp32 value of each bf16 gradient, and the model holds the masters rounded to bf16."""
    model, opt = bf16_setup(clip=0.05)
    flat, masters, ref_groups = fp32_copies(model)
    ref = torch.optim.AdamW(ref_groups, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1,
                            foreach=False)
    clipped = 0
    for step in range(5):
        backward(model, step)
        grads = [p.grad.float() for p in flat]
        norm = torch.sqrt(sum(g.double().square().sum() for g in grads)).item()
        coef = min(1.0, 0.05 / (norm + 1e-6))
        clipped += coef < 1.0
        for m, g in zip(masters, grads, strict=True):
            m.grad = g * coef
        ref.step()
        assert opt.step() is False
        assert opt._global_grad_norm == pytest.approx(norm, rel=1e-5)
        opt.zero_grad()
        mine = [m for ms in opt.fp32_groups for m in ms]
        for p, m, theirs in zip(flat, mine, masters, strict=True):
            torch.testing.assert_close(m.detach(), theirs.detach(), rtol=1e-5, atol=1e-7)
            assert torch.equal(p.detach(), m.detach().to(torch.bfloat16))
    assert clipped >= 3  # the limit was hit, so the clip was exercised


@pytest.mark.parametrize("name", ["sgd", "lion"])
def test_any_registered_optimizer_runs_on_the_masters(name: str) -> None:
    """The inner optimizer is whatever ``optimizer.type`` builds: here SGD with momentum and
    Lion, each checked against the same optimizer run on fp32 copies."""
    from megatron.training.optimizers import build_optimizer

    cfg = {"type": name, "params": {"lr": 1e-2} | ({"momentum": 0.9} if name == "sgd" else {})}

    def build(groups: list[dict]) -> torch.optim.Optimizer:
        return build_optimizer(groups, cfg, weight_decay=0.1)

    model = tiny_model()
    cast_parameters_(model, torch.bfloat16)
    opt = MasterWeights(groups_of(model), build)
    flat, masters, ref_groups = fp32_copies(model)
    start = [m.detach().clone() for m in masters]
    ref = build(ref_groups)
    for step in range(3):
        backward(model, step)
        for m, p in zip(masters, flat, strict=True):
            m.grad = p.grad.float()
        ref.step()
        opt.step()
        opt.zero_grad()
    mine = [m for ms in opt.fp32_groups for m in ms]
    for m, theirs in zip(mine, masters, strict=True):
        torch.testing.assert_close(m.detach(), theirs.detach(), rtol=1e-6, atol=1e-7)
    assert all(not torch.equal(m, s) for m, s in zip(mine, start, strict=True))  # they moved


def test_an_fp32_parameter_gets_its_own_master() -> None:
    model = tiny_model()
    opt = MasterWeights(groups_of(model), adamw)
    assert opt.fp32_groups[0][0].data_ptr() != model[0].weight.data_ptr()


def test_master_order_follows_the_groups() -> None:
    model, opt = bf16_setup()
    flat = [p for g in groups_of(model) for p in g["params"]]
    for p, m in zip(flat, (m for ms in opt.fp32_groups for m in ms), strict=True):
        assert m.shape == p.shape and m.dtype == torch.float32
    assert opt.param_groups is opt.inner.param_groups
    assert opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_withholds_the_update(bad: float) -> None:
    model, opt = bf16_setup(clip=1.0)
    backward(model, 0)
    opt.step()
    opt.zero_grad()
    weights = [p.detach().clone() for p in model.parameters()]
    masters = copy.deepcopy(opt.fp32_groups)
    state = copy.deepcopy({id(k): dict(v) for k, v in opt.state.items()})
    backward(model, 1)
    next(model.parameters()).grad[0, 0] = bad
    assert opt.step() is True and opt.overflow
    assert not torch.isfinite(torch.tensor(opt._global_grad_norm))
    for p, w in zip(model.parameters(), weights, strict=True):
        assert torch.equal(p.detach(), w)
    for ms, saved in zip(opt.fp32_groups, masters, strict=True):
        for m, s in zip(ms, saved, strict=True):
            assert torch.equal(m.detach(), s.detach()) and m.grad is None
    for key, entries in opt.state.items():
        for name, value in entries.items():
            assert torch.equal(value, state[id(key)][name]), name
    opt.zero_grad()
    backward(model, 2)
    assert opt.step() is False  # the next finite step goes through
    assert not torch.equal(next(model.parameters()).detach(), weights[0])


def test_an_unused_parameter_gets_a_zero_gradient() -> None:
    """As DeepSpeed's wrapper: zeros, so weight decay still shrinks it."""
    model, opt = bf16_setup()
    backward(model, 0)
    model[2].bias.grad = None
    before = model[2].weight.detach().clone()
    opt.step()
    assert opt.state[opt.fp32_groups[1][1]]["step"] == 1  # the bias was stepped with zeros
    assert not torch.equal(model[2].weight.detach(), before)


def test_state_dict_round_trip_resumes_exactly() -> None:
    model, opt = bf16_setup(clip=0.05)
    for step in range(2):
        backward(model, step)
        opt.step()
        opt.zero_grad()
    saved = copy.deepcopy(opt.state_dict())
    weights = copy.deepcopy(model.state_dict())
    for step in range(2, 4):
        backward(model, step)
        opt.step()
        opt.zero_grad()

    other, resumed = bf16_setup(clip=0.05)
    other.load_state_dict(weights)
    resumed.load_state_dict(saved)
    for step in range(2, 4):
        backward(other, step)
        resumed.step()
        resumed.zero_grad()
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    for ms, ns in zip(opt.fp32_groups, resumed.fp32_groups, strict=True):
        for m, n in zip(ms, ns, strict=True):
            assert torch.equal(m, n)


def test_state_dict_has_deepspeeds_unfused_layout() -> None:
    """The keys DeepSpeed's FP16_UnfusedOptimizer.load_state_dict reads, so a checkpoint
    moves between it and us."""
    _, opt = bf16_setup()
    state = opt.state_dict()
    assert {"dynamic_loss_scale", "cur_scale", "cur_iter", "optimizer_state_dict",
            "fp32_groups"} <= set(state)
    assert state["dynamic_loss_scale"] is False and state["cur_scale"] == 1.0
    assert state["fp32_groups"] is opt.fp32_groups


def test_loading_without_optimizer_states_keeps_the_masters_from_the_file() -> None:
    _, opt = bf16_setup()
    state = copy.deepcopy(opt.state_dict())
    state["fp32_groups"][0][0] = torch.full_like(opt.fp32_groups[0][0], 0.5)
    opt.load_state_dict(state, load_optimizer_states=False)
    assert torch.all(opt.fp32_groups[0][0] == 0.5)
    assert len(opt.state) == 0


def test_refresh_takes_the_masters_from_the_weights() -> None:
    model, opt = bf16_setup()
    with torch.no_grad():
        model[0].weight.fill_(0.25)
    opt.refresh_fp32_params()
    assert torch.all(opt.fp32_groups[0][0] == 0.25)


def test_masters_of_another_shape_are_refused() -> None:
    _, opt = bf16_setup()
    state = opt.state_dict()
    state["fp32_groups"] = [[torch.zeros(3)], state["fp32_groups"][1]]
    with pytest.raises(ValueError, match="fp32_groups"):
        opt.load_state_dict(state)


@pytest.mark.parametrize(("precision", "stage", "pipe", "env", "reason"), [
    ("bf16", 0, False, None, None),
    ("fp32", 0, False, None, "precision fp32"),
    ("fp16", 0, False, None, "precision fp16"),
    ("bf16", 1, False, None, "ZeRO"),
    ("bf16", 0, True, None, "pipeline"),
    ("bf16", 0, False, "deepspeed", "MEGATRON_BF16_OPTIMIZER=deepspeed"),
])
def test_where_we_keep_the_masters(monkeypatch: pytest.MonkeyPatch, precision: str, stage: int,
                                   pipe: bool, env: str | None, reason: str | None) -> None:
    if env:
        monkeypatch.setenv("MEGATRON_BF16_OPTIMIZER", env)
    opt = adamw(groups_of(tiny_model()))
    found = why_not_master_weights(precision, stage, pipe, opt)
    assert found == reason if reason is None else reason in found


def test_an_optimizer_deepspeed_builds_is_left_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "DeepSpeed builds" in why_not_master_weights("bf16", 0, False, None)
    monkeypatch.setenv("MEGATRON_BF16_OPTIMIZER", "sometimes")
    with pytest.raises(ValueError, match="MEGATRON_BF16_OPTIMIZER='sometimes'"):
        why_not_master_weights("bf16", 0, False, None)
