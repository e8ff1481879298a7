"""Init methods match GPT-NeoX's formulas; sharding helpers keep init layout-independent."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.model.gpt import GPTModel
from megatron.model.init import INIT_METHODS, join_shards, mark_sections, param_seed, take_shard
from megatron.parallel.groups import Group
from tests.model.conftest import tiny_spec

SPEC = tiny_spec(hidden_size=300, num_attention_heads=4, num_layers=8, init_method_std=0.02)
# Expected std of a [300, 400] tensor (fan_out 300, fan_in 400), from the published formulas.
EXPECTED_STD = {
    "normal": 0.02,
    "scaled_normal": 0.02 / math.sqrt(2 * 8),
    "single_residual_scaled_normal": 0.02 / math.sqrt(8),
    "wang_init": 2 / 8 / math.sqrt(300),
    "small_init": math.sqrt(2 / (5 * 300)),
    "xavier_uniform": math.sqrt(2 / (300 + 400)),
    "xavier_normal": math.sqrt(2 / (300 + 400)),
    "orthogonal": math.sqrt(2) / math.sqrt(400),  # rows orthogonal with norm sqrt(2)
    "scaled_orthogonal": math.sqrt(2 / 8) / math.sqrt(400),
}


def test_every_registered_init_method_has_an_expected_std() -> None:
    assert sorted(EXPECTED_STD) == INIT_METHODS.keys()


@pytest.mark.parametrize("name", sorted(EXPECTED_STD))
def test_init_std_matches_formula(name: str) -> None:
    t = torch.empty(300, 400)
    INIT_METHODS.get(name)(t, SPEC, torch.Generator().manual_seed(3))
    assert t.std().item() == pytest.approx(EXPECTED_STD[name], rel=0.03)
    assert abs(t.mean().item()) < 0.1 * EXPECTED_STD[name]


@pytest.mark.parametrize(("name", "gain_sq"), [("orthogonal", 2.0), ("scaled_orthogonal", 0.25)])
def test_orthogonal_rows(name: str, gain_sq: float) -> None:
    t = torch.empty(30, 40)
    INIT_METHODS.get(name)(t, SPEC, torch.Generator().manual_seed(0))
    torch.testing.assert_close(t @ t.T, gain_sq * torch.eye(30), atol=1e-5, rtol=0)


def test_model_uses_init_and_output_layer_init_biases_zero_norms_one() -> None:
    spec = tiny_spec(hidden_size=128, num_attention_heads=4, num_layers=2)
    params = dict(GPTModel(spec, Group(), seed=7).named_parameters())
    assert params["sequential.2.attention.query_key_value.weight"].std().item() == \
        pytest.approx(0.02, rel=0.05)
    assert params["sequential.3.mlp.linear2.weight"].std().item() == \
        pytest.approx(0.02 / math.sqrt(4), rel=0.05)
    assert params["sequential.2.attention.dense.bias"].abs().sum().item() == 0
    assert torch.equal(params["sequential.5.norm.weight"], torch.ones(128))
    assert torch.equal(params["sequential.2.input_layernorm.weight"], torch.ones(128))


def test_weights_depend_only_on_seed_and_name() -> None:
    spec = tiny_spec()
    a = dict(GPTModel(spec, Group(), seed=1).named_parameters())
    b = dict(GPTModel(spec, Group(), seed=1).named_parameters())
    c = dict(GPTModel(spec, Group(), seed=2).named_parameters())
    key = "sequential.2.attention.query_key_value.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
    assert not torch.equal(a[key], a[key.replace(".2.", ".3.")])  # layers differ
    assert param_seed(1, "x") != param_seed(1, "y")


def test_sectioned_shards_take_each_section_per_rank_and_join_back() -> None:
    full = torch.arange(12.0)[:, None]  # sections [8 rows of values, 4 rows of gates]
    param = torch.empty(6, 1)
    param.tp_dim = 0
    mark_sections(param, [8, 4])
    shards = [take_shard(full, param, Group(size=2, rank=r, ranks=(0, 1))) for r in (0, 1)]
    assert shards[0].flatten().tolist() == [0, 1, 2, 3, 8, 9]
    assert shards[1].flatten().tolist() == [4, 5, 6, 7, 10, 11]
    torch.testing.assert_close(join_shards(shards, param), full)


@pytest.mark.parametrize("overrides", [
    {}, {"num_kv_heads": 2, "activation": "swiglu", "tie_word_embeddings": False},
    {"pos_emb": "rpe", "use_qk_layernorm": True, "norm": "rmsnorm"},
])
def test_shard_layout_from_spec_agrees_with_built_layers(overrides: dict) -> None:
    from megatron.model.sharding import shard_layout

    spec = tiny_spec(**overrides)
    for name, param in GPTModel(spec, Group()).named_parameters():
        expected = (getattr(param, "tp_dim", None), getattr(param, "tp_sections", None))
        assert shard_layout(spec, name) == expected, name
