"""What self-attention keeps for backward: no more of the fused QKV output than it needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from megatron.model import attention
from megatron.model.attention import SelfAttention
from megatron.parallel.groups import Group
from tests.model.conftest import tiny_spec


@contextmanager
def saved_storages() -> Iterator[set[int]]:
    """The storages of every tensor autograd saves inside the block."""
    found: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        found.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield found


def run(pos_emb: str, grad: bool = True) -> tuple[set[int], int, torch.Tensor, torch.Tensor]:
    """(saved storages, the fused QKV output's storage, output, input gradient)."""
    torch.manual_seed(0)
    block = SelfAttention(tiny_spec(pos_emb=pos_emb, rotary_pct=0.5), 0, Group())
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    fused: list[int] = []
    block.query_key_value.register_forward_hook(
        lambda mod, args, out: fused.append(out[0].untyped_storage().data_ptr()))
    x = torch.randn(2, 16, 32, requires_grad=grad)
    with saved_storages() as saved, torch.set_grad_enabled(grad):
        out = block(x)
    if grad:
        out.square().sum().backward()
    return saved, fused[0], out.detach(), x.grad


def test_rotated_queries_and_keys_free_the_fused_output() -> None:
    # Rotary gives q and k storage of their own; only v still pointed into the QKV output.
    saved, fused, _, _ = run("rotary")
    assert saved and fused not in saved


def spy_on_copies(monkeypatch) -> list[bool]:
    """Whether each call of ``_own_storage`` copied ``v``."""
    copied: list[bool] = []
    original = attention._own_storage

    def spy(v: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        result = original(v, *rest)
        copied.append(result is not v)
        return result

    monkeypatch.setattr(attention, "_own_storage", spy)
    return copied


def test_unrotated_queries_keep_the_fused_output_without_a_copy(monkeypatch) -> None:
    # Without rotary q, k and v are all views of it: it is needed whole, v is not copied.
    copied = spy_on_copies(monkeypatch)
    saved, fused, _, _ = run("none")
    assert fused in saved
    assert copied == [False]


@pytest.mark.parametrize("pos_emb", ["rotary", "none"])
def test_the_copy_changes_no_output_or_gradient(monkeypatch, pos_emb: str) -> None:
    _, _, out, grad = run(pos_emb)
    monkeypatch.setattr(attention, "_own_storage", lambda v, *rest: v)
    _, _, ref_out, ref_grad = run(pos_emb)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)


def test_copies_only_while_recording_a_graph(monkeypatch) -> None:
    copied = spy_on_copies(monkeypatch)
    run("rotary", grad=False)
    run("rotary")
    assert copied == [False, True]
