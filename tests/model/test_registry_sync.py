"""Registries and the config's ``Literal`` values name the same options.

Adding an option is one registered class plus one Literal value; this test keeps the two in
step without the model importing the config.
"""

from __future__ import annotations

import typing

import pytest
import torch

from megatron.model.activations import ACTIVATIONS
from megatron.model.init import INIT_METHODS
from megatron.model.norms import NORMS
from megatron.model.positional import POSITIONAL
from megatron.model.registry import Registry
from megatron.neox_arguments.model import ModelArgs

HINTS = typing.get_type_hints(ModelArgs)


@pytest.mark.parametrize(("field", "registry"), [
    ("norm", NORMS), ("activation", ACTIVATIONS), ("pos_emb", POSITIONAL),
    ("init_method", INIT_METHODS), ("output_layer_init_method", INIT_METHODS),
])
def test_registry_keys_equal_config_literal(field: str, registry: Registry) -> None:
    assert sorted(typing.get_args(HINTS[field])) == registry.keys()


@pytest.mark.parametrize("name", NORMS.keys())
def test_every_norm_is_invariant_to_input_scale(name: str) -> None:
    norm = NORMS.get(name)(16, eps=1e-12)
    x = torch.randn(4, 16)
    torch.testing.assert_close(norm(3.0 * x), norm(x), atol=1e-5, rtol=1e-5)


def test_te_rmsnorm_puts_eps_inside_the_square_root() -> None:
    norm = NORMS.get("te_rmsnorm")(2, eps=1.0)
    x = torch.tensor([[1.0, 1.0]])  # mean square 1, so divide by sqrt(1 + 1)
    torch.testing.assert_close(norm(x), x / 2**0.5)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
