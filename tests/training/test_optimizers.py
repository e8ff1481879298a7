"""Optimizer registry, GPT-NeoX's weight-decay split, and hand-checked update math."""

import sys

import pytest
import torch

from megatron.training.optimizers import (
    OPTIMIZERS,
    DeepSpeedOptimizer,
    OptimizerError,
    build_optimizer,
    param_groups,
)


class RMSNorm(torch.nn.Module):
    """Stands in for the model's RMSNorm: a ``scale`` parameter on a *Norm class."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(n))


class Named(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.dense = torch.nn.Linear(4, 4)
        self.input_layernorm = torch.nn.LayerNorm(4)
        self.norm = RMSNorm(4)
        self.frozen = torch.nn.Linear(4, 4, bias=False)
        self.frozen.weight.requires_grad_(False)


def _names(model: torch.nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_param_groups_exempt_biases_and_norms() -> None:
    model = Named()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert _names(model, decay) == {"embed.weight", "dense.weight"}
    assert "weight_decay" not in decay  # the optimizer's weight_decay applies
    assert _names(model, no_decay) == {
        "dense.bias", "input_layernorm.weight", "input_layernorm.bias", "norm.scale"}
    assert no_decay["weight_decay"] == 0.0


def test_param_groups_single_group_without_weight_decay() -> None:
    model = Named()
    (only,) = param_groups(model, weight_decay=0.0)
    assert only["weight_decay"] == 0.0
    assert len(only["params"]) == 6  # everything trainable; the frozen weight is left out


TYPES = {
    "adam": {"lr": 0.05, "betas": [0.9, 0.95], "eps": 1e-8},
    "AdamW": {"lr": 0.05},
    "cpu_torch_adam": {"lr": 0.05},
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "lion": {"lr": 0.01, "betas": [0.9, 0.99]},
    "madgrad_wd": {"lr": 0.01},
    "sm3": {"lr": 0.2},
}


@pytest.mark.parametrize("type_name", sorted(TYPES))
def test_each_optimizer_lowers_the_loss(type_name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                torch.nn.Linear(16, 1))
    x = torch.randn(64, 8)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1)
    opt = build_optimizer(param_groups(model, 0.01), {"type": type_name,
                                                      "params": TYPES[type_name]},
                          weight_decay=0.01)
    assert isinstance(opt, torch.optim.Optimizer)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses


def _two_step(opt_type: str, params: dict, grads: list[list[float]]) -> tuple:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    groups = [{"params": [w]}, {"params": [b], "weight_decay": 0.0}]
    opt = build_optimizer(groups, {"type": opt_type, "params": params}, weight_decay=0.1)
    for g in grads:
        w.grad = torch.tensor(g[:2])
        b.grad = torch.tensor(g[2:])
        opt.step()
    return w.detach(), b.detach(), opt


def test_adamw_matches_hand_computed_steps() -> None:
    # Step 1: bias-corrected m/sqrt(v) = sign(g), so p <- p (1 - lr wd) - lr sign(g).
    # Step 2 (g doubled on w[0]): m_hat = 0.29 g / 0.19, v_hat = 0.004999 g^2 / 0.001999,
    # ratio 0.9651820...; p = 0.89 * 0.99 - 0.1 * 0.965182 = 0.7845818.
    params = {"lr": 0.1, "betas": [0.9, 0.999], "eps": 1e-8}
    w, b, _ = _two_step("adam", params, [[0.5, -0.25, 3.0]])
    assert w.tolist() == pytest.approx([0.89, -1.88], abs=1e-6)
    assert b.tolist() == pytest.approx([0.9], abs=1e-6)  # no decay on this group
    w, _, _ = _two_step("adamw", params, [[0.5, -0.25, 3.0], [1.0, -0.25, 3.0]])
    assert w[0].item() == pytest.approx(0.7845818, abs=1e-6)


def test_lion_matches_hand_computed_steps() -> None:
    # Step 1: c = 0.1 * g, sign +; p = 1 * (1 - 0.01) - 0.1 = 0.89; m = 0.01 * 0.5 = 0.005.
    # Step 2 (g = -1): c = 0.0045 - 0.1 < 0; p = 0.89 * 0.99 + 0.1 = 0.9811;
    # m = 0.99 * 0.005 - 0.01 = -0.00505.
    w, _, opt = _two_step("lion", {"lr": 0.1, "betas": [0.9, 0.99]},
                          [[0.5, 0.5, 1.0], [-1.0, 0.5, 1.0]])
    assert w[0].item() == pytest.approx(0.9811, abs=1e-6)
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg"][0].item() == pytest.approx(
        -0.00505, abs=1e-8)


def test_madgrad_matches_hand_computed_step() -> None:
    # lamb = 0.1; v = 0.1 * 0.25 = 0.025; rms = 0.025 ** (1/3) = 0.2924018;
    # z = 1 - 0.05 / rms = 0.8290024; p = 0.9 * 1 + 0.1 * z = 0.9829002.
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = build_optimizer([{"params": [w]}], {"type": "madgrad_wd",
                                              "params": {"lr": 0.1, "momentum": 0.9, "eps": 0.0}})
    w.grad = torch.tensor([0.5])
    opt.step()
    assert w.item() == pytest.approx(0.9829002, abs=1e-6)


def test_sm3_matches_hand_computed_steps() -> None:
    # Step 1: nu = g^2, update = sign(g) = 1; row maxima [4, 16], column maxima [9, 16].
    # Step 2 (g = 1): nu = min(row, col) + 1 = [[5, 5], [10, 17]]; update = 1 / sqrt(nu).
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = build_optimizer([{"params": [w]}], {"type": "sm3", "params": {"lr": 1.0}})
    w.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    opt.step()
    assert w.tolist() == [[-1.0, -1.0], [-1.0, -1.0]]
    w.grad = torch.ones(2, 2)
    opt.step()
    expected = [[-1.4472136, -1.4472136], [-1.3162278, -1.2425356]]
    assert w.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(OptimizerError, match="'adafactor' is not known.*'lion'"):
        build_optimizer([], {"type": "adafactor", "params": {}})


def test_unknown_param_is_named() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(OptimizerError, match=r"unknown keys \['momentum'\]"):
        build_optimizer([{"params": [p]}], {"type": "adam", "params": {"momentum": 0.9}})


def test_onebitadam_returns_a_deepspeed_marker() -> None:
    out = build_optimizer([], {"type": "OneBitAdam", "params": {"lr": 1e-4, "freeze_step": 2}},
                          weight_decay=0.01)
    assert out == DeepSpeedOptimizer({"type": "OneBitAdam", "params": {
        "lr": 1e-4, "freeze_step": 2, "weight_decay": 0.01}})


def test_bnb_without_bitsandbytes_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(OptimizerError, match="pip install bitsandbytes"):
        build_optimizer([{"params": [p]}], {"type": "adam", "params": {}}, use_bnb_optimizer=True)


def test_registry_covers_gpt_neox_types() -> None:
    assert set(OPTIMIZERS) >= {"adam", "cpu_adam", "cpu_torch_adam", "onebitadam", "lion",
                               "sgd", "sm3", "madgrad_wd"}
