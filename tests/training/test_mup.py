"""muP: base shapes, the model multipliers, init and per-group learning rates."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mup.infshape import zip_infshape

from megatron.model import ModelSpec, build_model
from megatron.parallel import ProcessGroups
from megatron.training import mup as mu

VOCAB = 512


def _args(**keys: object) -> SimpleNamespace:
    base = {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "seq_length": 32,
            "padded_vocab_size": VOCAB, "use_mup": True, "mup_attn_temp": 1.0,
            "mup_output_temp": 1.0, "mup_embedding_mult": 1.0, "mup_init_scale": 1.0,
            "hidden_dropout": 0.0, "attention_dropout": 0.0, "base_shapes_file": None}
    return SimpleNamespace(**{**base, **keys})


def _param(shape: tuple[int, ...], base: tuple[int, ...]) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.ones(shape))
    p.infshape = zip_infshape(base, shape)
    return p


def test_spec_multipliers_follow_the_neox_keys() -> None:
    spec = ModelSpec.from_args(_args(mup_attn_temp=2.0, mup_output_temp=4.0,
                                     mup_embedding_mult=3.0))
    assert spec.attention_scale == pytest.approx(1.0 / (16 * 2.0))  # head_dim 64/4 = 16
    assert spec.output_mult == pytest.approx(0.25) and spec.embedding_mult == 3.0
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0)
    assert model.sequential[2].attention.scale == pytest.approx(1.0 / 32)
    plain = ModelSpec.from_args(_args(use_mup=False, mup_attn_temp=2.0))
    assert plain.attention_scale is None and plain.output_mult == 1.0


def test_base_shapes_round_trip_and_width_multiplier(tmp_path: Path) -> None:
    spec = ModelSpec.from_args(_args())
    path = tmp_path / "shapes.yml"
    mu.save_base_shapes(spec, path, width_scale=2)
    base = mu.load_base_shapes(path)
    assert base[mu.EMBEDDING].base_shape() == [None, 64]  # vocab finite, hidden a width
    qkv = "sequential.2.attention.query_key_value.weight"
    assert base[qkv].base_shape() == [192, 64]
    wide = dataclasses.replace(spec, hidden_size=128)
    assert mu.readout_width_mult(base, wide, str(path)) == 2.0
    args = _args(hidden_size=128, base_shapes_file=str(path), mup_output_temp=2.0)
    assert mu.prepare_spec(ModelSpec.from_args(args), args).output_mult == pytest.approx(0.25)


def test_missing_file_and_unknown_parameter_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(mu.MupError, match="does not exist"):
        mu.load_base_shapes(tmp_path / "nope.yml")
    model = torch.nn.Linear(4, 4)
    with pytest.raises(mu.MupError, match="no base shape for parameter 'weight'"):
        mu.set_infshapes(model, {}, tp_size=1, where="f.yml")


def test_full_shapes_and_pipeline_names() -> None:
    shard = torch.nn.Parameter(torch.zeros(6, 4))
    shard.model_parallel, shard.partition_dim = True, 0
    assert mu.full_shape(shard, tp_size=2) == (12, 4)
    assert mu.full_shape(torch.nn.Parameter(torch.zeros(6, 4)), tp_size=2) == (6, 4)
    assert mu.canonical_name("3.mlp.linear1.weight") == "sequential.3.mlp.linear1.weight"
    assert mu.canonical_name("tied_modules.embed.word_embeddings.weight") == mu.EMBEDDING
    assert mu.canonical_name("sequential.5.norm.weight") == "sequential.5.norm.weight"


def test_adam_and_sgd_group_factors() -> None:
    matrix = _param((8, 8), (4, 4))  # two widths, width_mult 2
    vector = _param((10, 8), (10, 4))  # one width (like the embedding)
    gain = _param((8,), (4,))
    groups = [{"params": [matrix, vector]}, {"params": [gain], "weight_decay": 0.0}]
    adam = mu.mup_param_groups(groups, "Adam", weight_decay=0.1)
    by_param = {id(g["params"][0]): g for g in adam}
    assert by_param[id(matrix)]["lr_scale"] == 0.5
    assert by_param[id(matrix)]["weight_decay"] == pytest.approx(0.2)
    assert by_param[id(vector)]["lr_scale"] == 1.0 and by_param[id(gain)]["weight_decay"] == 0.0
    sgd = {id(g["params"][0]): g for g in mu.mup_param_groups(groups, "sgd", weight_decay=0.1)}
    assert sgd[id(vector)]["lr_scale"] == 2.0
    assert sgd[id(vector)]["weight_decay"] == pytest.approx(0.05)
    assert sgd[id(matrix)]["lr_scale"] == 1.0  # fan-in and fan-out grow alike
    with pytest.raises(mu.MupError, match="onebitadam"):
        mu.mup_param_groups(groups, "onebitadam", weight_decay=0.0)


def test_init_rescaling() -> None:
    matrix, vector, gain = _param((8, 8), (4, 4)), _param((10, 8), (10, 4)), _param((8,), (4,))
    module = torch.nn.Module()
    module.a, module.b, module.c = matrix, vector, gain
    mu.rescale_init(module, init_scale=3.0)
    assert torch.allclose(matrix, torch.full((8, 8), 3.0 / math.sqrt(2.0)))
    assert torch.equal(vector, torch.full((10, 8), 3.0)) and torch.equal(gain, torch.ones(8))


def _mup_model(hidden: int, shapes: Path, **keys: object) -> torch.nn.Module:
    args = _args(hidden_size=hidden, base_shapes_file=str(shapes), **keys)
    spec = mu.prepare_spec(ModelSpec.from_args(args), args)
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=7)
    mu.apply_mup(model, args, tp_size=1)
    return model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (4, 32), generator=gen)
    with torch.no_grad():
        return model((tokens, torch.arange(32).expand(4, 32)))


def test_initial_logit_scale_at_widths_64_and_128(tmp_path: Path) -> None:
    # Tied readout rows ~ N(0, 0.02^2) (vector-like: not rescaled); the final LayerNorm output
    # has unit RMS, so a logit has std 0.02 * sqrt(h) / width_mult: 0.16 at h=64 (the base),
    # 0.02 * sqrt(128) / 2 = 0.1131 at h=128.
    shapes = tmp_path / "shapes.yml"
    mu.save_base_shapes(ModelSpec.from_args(_args()), shapes, width_scale=2)
    narrow, wide = _mup_model(64, shapes), _mup_model(128, shapes)
    assert float(_logits(narrow).std()) == pytest.approx(0.16, rel=0.08)
    assert float(_logits(wide).std()) == pytest.approx(0.02 * math.sqrt(128) / 2, rel=0.08)
    # Hidden matrices: init std 0.02 / sqrt(width_mult) at h=128.
    qkv = dict(wide.named_parameters())["sequential.2.attention.query_key_value.weight"]
    assert float(qkv.detach().std()) == pytest.approx(0.02 / math.sqrt(2), rel=0.05)


def test_output_temperature_divides_the_logits(tmp_path: Path) -> None:
    shapes = tmp_path / "shapes.yml"
    mu.save_base_shapes(ModelSpec.from_args(_args()), shapes, width_scale=2)
    cold = _logits(_mup_model(128, shapes, mup_output_temp=4.0))
    warm = _logits(_mup_model(128, shapes))
    torch.testing.assert_close(cold * 4.0, warm, rtol=1e-5, atol=1e-6)
