"""Activation functions (``ACTIVATIONS``); each entry says whether it is a gated unit.

A gated unit's input is linear1's output split in halves ``[x, gate]`` (per tensor-parallel
rank, as GPT-NeoX does) and returns ``x * act(gate)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron.model.registry import Registry


@dataclass(frozen=True)
class Activation:
    """An activation function and whether it gates (halving linear1's output)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    gated: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation; gated units take ``[..., 2w]`` and return ``[..., w]``."""
        if not self.gated:
            return self.fn(x)
        value, gate = x.chunk(2, dim=-1)  # first half is the value, second the gate
        return value * self.fn(gate)


ACTIVATIONS: Registry[Activation] = Registry("activation")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


for _name, _fn, _gated in (
    ("gelu", F.gelu, False),
    ("relu", F.relu, False),
    ("softsign", F.softsign, False),
    ("swish", F.silu, False),
    ("silu", F.silu, False),
    ("mish", F.mish, False),
    ("geglu", F.gelu, True),
    ("reglu", F.relu, True),
    ("swiglu", F.silu, True),
    ("bilinear", _identity, True),
    ("glu", torch.sigmoid, True),
):
    ACTIVATIONS.register(_name)(Activation(_fn, _gated))
