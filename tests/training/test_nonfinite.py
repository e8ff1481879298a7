"""The non-finite guard withholds an update with a NaN gradient and applies the rest."""

from __future__ import annotations

import torch

from megatron.training.nonfinite import NonFiniteGuard


def _model_and_guard() -> tuple[torch.nn.Linear, torch.optim.Optimizer, NonFiniteGuard]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, NonFiniteGuard(optimizer)


def test_nan_gradient_leaves_weights_and_state_alone() -> None:
    model, optimizer, guard = _model_and_guard()
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(2, 4)).sum().backward()
    model.weight.grad[0, 0] = float("nan")
    optimizer.step()
    assert guard.skipped_last
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert optimizer.state == {} or all(not s for s in optimizer.state.values())


def test_finite_gradient_is_applied() -> None:
    model, optimizer, guard = _model_and_guard()
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert not guard.skipped_last
    assert not torch.equal(before, model.weight)


def test_inf_after_finite_step_is_skipped_again() -> None:
    model, optimizer, guard = _model_and_guard()
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    after_first = model.bias.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    model.bias.grad[1] = float("inf")
    optimizer.step()
    assert guard.skipped_last
    assert torch.equal(after_first, model.bias)
