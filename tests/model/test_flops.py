"""Exact parameter and FLOP counts against hand-computed values and real models."""

from __future__ import annotations

import pytest

from megatron.model.flops import flops_per_iteration, num_parameters
from megatron.model.gpt import GPTModel
from megatron.parallel.groups import Group
from tests.model.conftest import tiny_spec

# h=32, L=2, 4 heads, V=64, 16 learned positions, LayerNorm with bias, GELU, biases, tied.
DENSE = tiny_spec()
# Same sizes with GQA (2 kv heads), RMSNorm without bias, SwiGLU of width 48, no biases,
# rotary, untied output.
GQA = tiny_spec(num_kv_heads=2, pos_emb="rotary", norm="rmsnorm", use_bias_in_norms=False,
                activation="swiglu", intermediate_size=48, use_bias_in_attn_linear=False,
                use_bias_in_mlp=False, tie_word_embeddings=False)


def test_dense_parameter_count_by_hand() -> None:
    # embed 64*32 + positions 16*32 + 2 * (qkv 32*96+96, dense 32*32+32, linear1 32*128+128,
    # linear2 128*32+32, two norms 2*64) + final norm 64
    assert num_parameters(DENSE) == 2048 + 512 + 2 * (3168 + 1056 + 4224 + 4128 + 128) + 64


def test_gqa_swiglu_untied_parameter_count_by_hand() -> None:
    # embed 2048 + head 2048 + 2 * (qkv 32*64, dense 1024, linear1 32*96, linear2 48*32,
    # two RMSNorm scales 2*32) + final scale 32
    assert num_parameters(GQA) == 2048 + 2048 + 2 * (2048 + 1024 + 3072 + 1536 + 64) + 32


@pytest.mark.parametrize("spec", [
    DENSE, GQA,
    tiny_spec(pos_emb="rpe", use_qk_layernorm=True, norm="scalenorm"),
    tiny_spec(gpt_j_residual=True, gpt_j_tied=True, pos_emb="alibi", activation="geglu",
              num_kv_heads=1, norm="non_parametric_layernorm"),
    tiny_spec(pos_emb="sinusoidal", norm="rmsnorm", use_bias_in_norms=True),
], ids=["dense", "gqa", "rpe-qknorm-scalenorm", "gptj-mqa-geglu", "sinusoidal-rms-bias"])
def test_parameter_count_equals_built_model(spec: object) -> None:
    model = GPTModel(spec, Group())
    assert num_parameters(spec) == sum(p.numel() for p in model.parameters())


def test_dense_flops_by_hand_and_against_megatron_formula() -> None:
    # forward per token: 2 layers * (2 * 12288 matmul weights + 4 * s * h) + 2 * h * V
    per_token = 2 * (2 * 12288 + 4 * 16 * 32) + 2 * 32 * 64
    assert per_token == 57344
    assert flops_per_iteration(DENSE, 3, 16) == 3 * 3 * 16 * per_token
    assert flops_per_iteration(DENSE, 3, 16, activation_checkpointing=True) == \
        4 * 3 * 16 * per_token
    b, s, n, h, v = 3, 16, 2, 32, 64  # Megatron's closed form for dense GPT, exact here
    closed = 72 * b * s * n * h * h * (1 + s / (6 * h) + v / (12 * n * h))
    assert flops_per_iteration(DENSE, b, s) == pytest.approx(closed, rel=1e-12)


def test_gqa_flops_by_hand() -> None:
    # matmul weights per block: qkv 2048 + dense 1024 + linear1 3072 + linear2 1536 = 7680
    per_token = 2 * (2 * 7680 + 4 * 16 * 32) + 2 * 32 * 64
    assert flops_per_iteration(GQA, 2, 16) == 3 * 2 * 16 * per_token
