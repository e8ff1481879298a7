"""Numeric properties of norms, activations, positional encodings and attention kernels."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.model.activations import ACTIVATIONS
from megatron.model.kernels import ATTENTION_KERNELS, reference_attention
from megatron.model.norms import NORMS
from megatron.model.positional import POSITIONAL, alibi_slopes, t5_buckets
from megatron.parallel.groups import Group
from tests.model.conftest import tiny_spec

ONE = Group()


def test_alibi_slopes_8_heads_are_powers_of_one_half() -> None:
    assert alibi_slopes(8) == pytest.approx([0.5, 0.25, 0.125, 0.0625, 1 / 32, 1 / 64,
                                             1 / 128, 1 / 256])


def test_alibi_slopes_12_heads_interleave_the_16_head_series() -> None:
    expected = [2.0**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    assert alibi_slopes(12) == pytest.approx(expected)


def test_alibi_bias_is_minus_slope_times_distance_on_this_ranks_heads() -> None:
    spec = tiny_spec(hidden_size=64, num_attention_heads=8, pos_emb="alibi")
    rank1 = POSITIONAL.get("alibi")(spec, Group(size=2, rank=1, ranks=(0, 1)))
    bias = rank1.score_bias(3, 3)  # [1, 4, 3, 3]: heads 4..7 of 8
    assert bias.shape == (1, 4, 3, 3)
    assert bias[0, 0, 2, 0].item() == pytest.approx(-2 / 32)  # head 4: slope 1/32, distance 2
    assert bias[0, 3, 1, 0].item() == pytest.approx(-1 / 256)


def _complex_rotation(x: torch.Tensor, dims: int, base: float) -> torch.Tensor:
    """Rotate channel pairs (i, i + dims/2) as complex numbers by position * base^(-2i/dims)."""
    s, half = x.shape[1], dims // 2
    pos = torch.arange(s, dtype=torch.float64)[:, None]
    theta = base ** (-2 * torch.arange(half, dtype=torch.float64) / dims)
    phase = torch.polar(torch.ones(s, half, dtype=torch.float64), pos * theta)  # [s, half]
    z = torch.complex(x[..., :half].double(), x[..., half:dims].double())
    z = z * phase[None, :, None, :]
    return torch.cat((z.real, z.imag, x[..., dims:].double()), dim=-1).float()


@pytest.mark.parametrize("rotary_pct", [1.0, 0.5])
def test_rotary_equals_complex_rotation(rotary_pct: float) -> None:
    spec = tiny_spec(pos_emb="rotary", rotary_pct=rotary_pct, rotary_emb_base=500)
    rope = POSITIONAL.get("rotary")(spec, ONE)
    q, k = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 2, 8)
    q_rot, k_rot = rope.rotate(q, k)
    assert rope.dims == int(8 * rotary_pct)
    torch.testing.assert_close(q_rot, _complex_rotation(q, rope.dims, 500), atol=1e-5, rtol=0)
    torch.testing.assert_close(k_rot, _complex_rotation(k, rope.dims, 500), atol=1e-5, rtol=0)


def test_t5_buckets_exact_then_logarithmic() -> None:
    distances = torch.tensor([-3, 0, 1, 7, 8, 16, 127, 1000])
    # 16 buckets, max distance 128: exact below 8; 8 + log(n/8)/log(16) * 8 above.
    expected = [0, 0, 1, 7, 8, 10, 15, 15]
    assert t5_buckets(distances, 16, 128).tolist() == expected


def test_rmsnorm_output_has_unit_rms_before_scaling() -> None:
    norm = NORMS.get("rmsnorm")(16, eps=1e-12)
    x = torch.randn(3, 5, 16) * 7 + 2
    rms = norm(x).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(3, 5))
    with torch.no_grad():
        norm.scale.fill_(3.0)
    torch.testing.assert_close(norm(x).pow(2).mean(-1).sqrt(), torch.full((3, 5), 3.0))
    assert [n for n, _ in norm.named_parameters()] == ["scale"]


def test_layernorm_has_gpt_neox_parameters_and_normalises() -> None:
    norm = NORMS.get("layernorm")(16, eps=1e-5, bias=False)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
    out = norm(torch.randn(4, 16) * 5 + 3)
    torch.testing.assert_close(out.mean(-1), torch.zeros(4), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in NORMS.get("non_parametric_layernorm")(16).parameters()) == 0


def test_scalenorm_divides_by_l2_norm() -> None:
    norm = NORMS.get("scalenorm")(4, eps=1e-5)
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    torch.testing.assert_close(norm(x), torch.tensor([[0.6, 0.8, 0.0, 0.0]]))


def test_gated_activation_multiplies_first_half_by_act_of_second() -> None:
    x = torch.tensor([[2.0, -1.0, 1.0, 3.0]])  # values [2, -1], gates [1, 3]
    out = ACTIVATIONS.get("swiglu")(x)
    silu = [1 / (1 + math.exp(-1)), 3 / (1 + math.exp(-3))]
    torch.testing.assert_close(out, torch.tensor([[2 * silu[0], -1 * silu[1]]]))
    torch.testing.assert_close(ACTIVATIONS.get("reglu")(torch.tensor([[2.0, 5.0, -1.0, 4.0]])),
                               torch.tensor([[0.0, 20.0]]))
    gated = {k for k in ACTIVATIONS.keys() if ACTIVATIONS.get(k).gated}
    assert gated == {"geglu", "reglu", "swiglu", "bilinear", "glu"}


def _qkv(seed: int = 0, sq: int = 7) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 4, sq, 8, generator=gen) for _ in range(3))


@pytest.mark.parametrize("kernel", ATTENTION_KERNELS.keys())
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_kernel_equals_reference(kernel: str, window: int | None, with_bias: bool) -> None:
    q, k, v = _qkv()
    bias = torch.randn(1, 4, 7, 7) if with_bias else None
    expected = reference_attention(q, k, v, bias=bias, window=window, scale=0.3)
    got = ATTENTION_KERNELS.get(kernel)(q, k, v, bias=bias, window=window, scale=0.3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_reference_matches_hand_softmax_at_one_position() -> None:
    q, k, v = _qkv(1)
    out = reference_attention(q, k, v, window=3)
    i = 5  # keys 2, 3, 4, 5 are inside the window (i - 3 .. i, as flash-attn's left window)
    scores = (q[0, 1, i] @ k[0, 1, 2:6].T) / math.sqrt(8)
    expected = torch.softmax(scores, -1) @ v[0, 1, 2:6]
    torch.testing.assert_close(out[0, 1, i], expected, atol=1e-6, rtol=1e-6)


def test_local_attention_ignores_keys_beyond_the_window() -> None:
    q, k, v = _qkv(2)
    v2 = v.clone()
    v2[:, :, 1] += 100.0  # position 1 is outside the window of queries 5, 6 (keys 2.. / 3..)
    a = reference_attention(q, k, v, window=3)
    b = reference_attention(q, k, v2, window=3)
    torch.testing.assert_close(a[:, :, 5:], b[:, :, 5:])
    for i in range(1, 5):  # queries 1..4 still see position 1
        assert not torch.allclose(a[:, :, i], b[:, :, i])


def test_query_key_layer_scaling_does_not_change_fp32_attention() -> None:
    q, k, v = _qkv(3)
    torch.testing.assert_close(reference_attention(q, k, v, coeff=5.0),
                               reference_attention(q, k, v), atol=1e-6, rtol=1e-6)


def test_attention_types_choose_kernel_and_window() -> None:
    from megatron.model.attention import DEFAULT_LOCAL_WINDOW, kernel_and_window

    spec = tiny_spec(num_layers=3, attention_config=("global", "local", "flash"))
    assert [kernel_and_window(spec, i) for i in range(3)] == [
        ("sdpa", None), ("sdpa", DEFAULT_LOCAL_WINDOW), ("flash", None)]
    windowed = tiny_spec(num_layers=3, attention_config=("global", "local", "flash"),
                         sliding_window_width=4, attention_kernel="reference")
    assert [kernel_and_window(windowed, i) for i in range(3)] == [
        ("reference", 4), ("reference", 4), ("flash", 4)]
