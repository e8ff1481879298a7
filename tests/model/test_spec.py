"""ModelSpec.from_args: the mapping from GPT-NeoX keys, and GPT-NeoX's MLP sizing rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from megatron.model.errors import ModelSpecError
from megatron.model.spec import ModelSpec, neox_mlp_width


def _args(**values: object) -> SimpleNamespace:
    base = dict(hidden_size=64, num_layers=2, num_attention_heads=4, padded_vocab_size=128,
                seq_length=32, max_position_embeddings=None)
    base.update(values)
    return SimpleNamespace(**base)


@pytest.mark.parametrize(("norm", "key", "value"), [
    ("layernorm", "layernorm_epsilon", 1e-3),
    ("rmsnorm", "rms_norm_epsilon", 1e-6),
    ("scalenorm", "scalenorm_epsilon", 1e-4),
    ("non_parametric_layernorm", "layernorm_epsilon", 2e-5),
])
def test_eps_is_read_from_the_key_of_the_norm_type(norm: str, key: str, value: float) -> None:
    others = dict(layernorm_epsilon=9.0, rms_norm_epsilon=9.0, scalenorm_epsilon=9.0)
    others[key] = value
    assert ModelSpec.from_args(_args(norm=norm, **others)).norm_eps == value


def test_rotary_dims_from_rotary_pct() -> None:
    spec = ModelSpec.from_args(_args(pos_emb="rotary", rotary_pct=0.25, rotary_emb_base=500))
    assert (spec.head_dim, spec.rotary_dims, spec.rotary_emb_base) == (16, 4, 500)
    assert ModelSpec.from_args(_args(rotary_pct=1.0)).rotary_dims == 16


def test_attention_config_tying_and_residual_are_mapped() -> None:
    spec = ModelSpec.from_args(_args(attention_config=["global", "local"], no_weight_tying=True,
                                     gpt_j_residual=True, num_kv_heads=2))
    assert [spec.layer_attention(i) for i in range(2)] == ["global", "local"]
    assert spec.tie_word_embeddings is False and spec.gpt_j_residual is True
    assert spec.kv_heads == 2 and spec.gqa
    assert ModelSpec.from_args(_args()).tie_word_embeddings is True


def test_padded_vocab_argument_overrides_and_missing_vocab_is_an_error() -> None:
    assert ModelSpec.from_args(_args(padded_vocab_size=None), padded_vocab_size=256) \
        .padded_vocab_size == 256
    with pytest.raises(ModelSpecError, match="padded_vocab_size"):
        ModelSpec.from_args(_args(padded_vocab_size=None))


@pytest.mark.parametrize(("hidden", "act", "inter", "factor", "multiple", "expected"), [
    (64, "gelu", None, None, 1, 256),  # 4h
    (64, "swiglu", None, None, 1, 85),  # int(256 * 2/3) = 170, halved
    (64, "gelu", None, 2.5, 1, 160),
    (4096, "swiglu", 32768, None, 256, 11008),  # LLaMA-7B's width
    (512, "geglu", None, None, 64, 704),  # int(2048*2/3)=1365 -> 1408 / 682 -> 704
])
def test_mlp_width_follows_gpt_neox(hidden: int, act: str, inter: int | None,
                                    factor: float | None, multiple: int, expected: int) -> None:
    args = _args(hidden_size=hidden, num_attention_heads=4, activation=act,
                 intermediate_size=inter, expansion_factor=factor, mlp_multiple_of=multiple)
    spec = ModelSpec.from_args(args)
    assert spec.mlp_width == expected
    assert spec.linear1_width == expected * (2 if act in ("swiglu", "geglu") else 1)


def test_mlp_sizes_that_gpt_neox_cannot_build_are_rejected() -> None:
    with pytest.raises(ModelSpecError, match="linear1 width 512"):
        neox_mlp_width(64, False, None, None, 256)
    with pytest.raises(ModelSpecError, match="not both"):
        neox_mlp_width(64, False, 100, 2.0, 1)


def test_invalid_specs_name_the_problem() -> None:
    with pytest.raises(ModelSpecError, match="num_kv_heads = 3"):
        ModelSpec(hidden_size=64, num_layers=1, num_attention_heads=4, padded_vocab_size=8,
                  num_kv_heads=3)
    with pytest.raises(ModelSpecError, match="unknown activation 'swigloo'.*swiglu"):
        ModelSpec.from_args(_args(activation="swigloo"))
    with pytest.raises(ModelSpecError, match="'gmlp' is not supported"):
        ModelSpec.from_args(_args(attention_config=["gmlp", "global"]))
    with pytest.raises(ModelSpecError, match="rotates 3 of 16 channels"):
        ModelSpec.from_args(_args(pos_emb="rotary", rotary_pct=0.2))
    with pytest.raises(ModelSpecError, match="hidden_size"):
        ModelSpec.from_args(_args(hidden_size=None))


def test_every_spec_field_is_read_from_its_gpt_neox_key() -> None:
    import dataclasses

    neox = dict(num_kv_heads=2, seq_length=24, max_position_embeddings=40, pos_emb="alibi",
                rotary_pct=0.5, rotary_emb_base=77, rpe_num_buckets=8, rpe_max_distance=64,
                norm="rmsnorm", rms_norm_epsilon=1e-3, use_bias_in_norms=False,
                use_qk_layernorm=True, activation="relu", intermediate_size=96,
                use_bias_in_mlp=False, use_bias_in_attn_linear=False,
                apply_query_key_layer_scaling=True, attention_softmax_in_fp32=True,
                attention_config=["flash", "global"], attention_kernel="reference",
                sliding_window_width=7, attention_dropout=0.25, gpt_j_residual=True,
                gpt_j_tied=True, no_weight_tying=True, hidden_dropout=0.125,
                init_method="small_init", output_layer_init_method="wang_init",
                init_method_std=0.5, sequence_parallel=True, use_mup=True,
                mup_attn_temp=2.0, mup_embedding_mult=3.0, mup_output_temp=0.5)
    spec = ModelSpec.from_args(_args(**neox))
    defaults = ModelSpec(hidden_size=64, num_layers=2, num_attention_heads=4,
                         padded_vocab_size=128)
    unchanged = {f.name for f in dataclasses.fields(ModelSpec)
                 if getattr(spec, f.name) == getattr(defaults, f.name)}
    assert unchanged == {"hidden_size", "num_layers", "num_attention_heads",
                         "padded_vocab_size"}
    assert spec.norm_eps == 1e-3 and spec.tie_word_embeddings is False
    assert spec.intermediate_size == 96 and spec.attention_config == ("flash", "global")


def test_architecture_options_we_lack_are_errors_not_ignored() -> None:
    with pytest.raises(ModelSpecError, match="'opt_pos_emb_offset' = 2 is not supported"):
        ModelSpec.from_args(_args(opt_pos_emb_offset=2))
    with pytest.raises(ModelSpecError, match="'num_unique_layers' = 1"):
        ModelSpec.from_args(_args(num_unique_layers=1))
    assert ModelSpec.from_args(_args(num_unique_layers=2)).num_layers == 2  # all unique
