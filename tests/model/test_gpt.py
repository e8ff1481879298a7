"""The single-process GPT: layer indices, tying, residual forms, GQA, checkpointing, loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megatron.model import build_model
from megatron.model.attention import SelfAttention
from megatron.model.gpt import GPTModel
from megatron.parallel.groups import Group, ProcessGroups
from megatron.parallel.random import RNGTracker
from tests.model.conftest import tiny_inputs, tiny_spec


def _keys(model: torch.nn.Module) -> set[str]:
    return {k for k, _ in model.named_parameters()}


def test_gpt_neox_layer_indices_and_parameter_names() -> None:
    keys = _keys(GPTModel(tiny_spec(tie_word_embeddings=False, num_layers=3), Group()))
    layers = {int(k.split(".")[1]) for k in keys}
    assert layers == {0, 2, 3, 4, 6, 7}  # 1 and L+2 = 5 hold no parameters
    assert {"sequential.0.word_embeddings.weight", "sequential.0.position_embeddings.weight",
            "sequential.3.attention.query_key_value.weight", "sequential.3.attention.dense.bias",
            "sequential.3.mlp.linear1.weight", "sequential.3.mlp.linear2.weight",
            "sequential.3.input_layernorm.weight", "sequential.3.post_attention_layernorm.bias",
            "sequential.6.norm.weight", "sequential.7.final_linear.weight"} <= keys
    rms = _keys(GPTModel(tiny_spec(norm="rmsnorm", use_bias_in_norms=False), Group()))
    assert "sequential.5.norm.scale" in rms and "sequential.2.input_layernorm.scale" in rms


def test_tied_head_reuses_the_embedding_and_equals_an_untied_copy() -> None:
    tied = GPTModel(tiny_spec(), Group()).eval()
    untied = GPTModel(tiny_spec(tie_word_embeddings=False), Group()).eval()
    assert max(int(k.split(".")[1]) for k in _keys(tied)) == 5  # no layer L+4
    state = tied.state_dict()
    state["sequential.6.final_linear.weight"] = state["sequential.0.word_embeddings.weight"]
    untied.load_state_dict(state)
    tokens, pos, _ = tiny_inputs()
    torch.testing.assert_close(tied((tokens, pos)), untied((tokens, pos)))


@pytest.mark.parametrize("overrides", [{}, {"pos_emb": "rotary", "activation": "swiglu",
                                            "num_kv_heads": 2, "norm": "rmsnorm"},
                                       {"pos_emb": "alibi", "gpt_j_residual": True}])
def test_model_is_causal(overrides: dict) -> None:
    model = GPTModel(tiny_spec(**overrides), Group()).eval()
    tokens, pos, _ = tiny_inputs()
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 64
    a, b = model((tokens, pos)), model((changed, pos))
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_parallel_residual_adds_attention_and_mlp_of_the_block_input() -> None:
    for tied in (False, True):
        spec = tiny_spec(gpt_j_residual=True, gpt_j_tied=tied)
        block = GPTModel(spec, Group()).sequential[2].eval()
        x = torch.randn(2, 5, 32)
        norm2 = block.input_layernorm if tied else block.post_attention_layernorm
        expected = x + block.attention(block.input_layernorm(x)) + block.mlp(norm2(x))
        torch.testing.assert_close(block(x), expected)
        assert hasattr(block, "post_attention_layernorm") is not tied


def test_sequential_residual_is_pre_norm() -> None:
    block = GPTModel(tiny_spec(), Group()).sequential[2].eval()
    x = torch.randn(2, 5, 32)
    mid = x + block.attention(block.input_layernorm(x))
    torch.testing.assert_close(block(x), mid + block.mlp(block.post_attention_layernorm(mid)))


def test_gqa_equals_mha_with_repeated_key_value_heads() -> None:
    gqa_spec = tiny_spec(num_kv_heads=2, pos_emb="rotary")
    gqa = SelfAttention(gqa_spec, 0, Group())
    mha = SelfAttention(dataclasses.replace(gqa_spec, num_kv_heads=None), 0, Group())
    d = 8

    def per_head(t: torch.Tensor) -> torch.Tensor:
        """GQA layout [Q (4 heads), K (2), V (2)] -> MHA rows [q_h, k_h//2, v_h//2] per head."""
        q, k, v = t.split([32, 16, 16])
        rows = []
        for h in range(4):
            g = h // 2  # query heads 0, 1 share kv head 0; 2, 3 share kv head 1
            rows += [q[h * d : (h + 1) * d], k[g * d : (g + 1) * d], v[g * d : (g + 1) * d]]
        return torch.cat(rows)

    with torch.no_grad():
        for p in gqa.parameters():  # layers built alone are not initialised (``no_init``)
            p.copy_(torch.randn_like(p))
        mha.query_key_value.weight.copy_(per_head(gqa.query_key_value.weight))
        mha.query_key_value.bias.copy_(per_head(gqa.query_key_value.bias))
        mha.dense.load_state_dict(gqa.dense.state_dict())
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_tracker", [False, True])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(with_tracker: bool) -> None:
    spec = tiny_spec(num_layers=3, hidden_dropout=0.1, attention_dropout=0.1)
    tokens, pos, labels = tiny_inputs()
    results = []
    for ckpt in (False, True):
        tracker = RNGTracker.from_seed(5, tp_rank=0) if with_tracker else None
        model, loss_fn = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0,
                                     activation_checkpointing=ckpt, checkpoint_num_layers=2,
                                     rng_tracker=tracker)
        torch.manual_seed(5)
        loss = loss_fn(model((tokens, pos)), (labels, torch.ones(2, 16)))
        loss.backward()
        results.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for key, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][key], grad, msg=key)


def test_loss_is_the_masked_mean_of_token_cross_entropy() -> None:
    model, loss_fn = build_model(tiny_spec(), ProcessGroups.single(), pipe_parallel_size=0)
    logits = torch.randn(2, 3, 64)
    labels = torch.randint(0, 64, (2, 3))
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    per_token = F.cross_entropy(logits.view(-1, 64), labels.view(-1), reduction="none")
    expected = (per_token * mask.view(-1)).sum() / 3
    torch.testing.assert_close(loss_fn(logits, (labels, mask)), expected)


@pytest.mark.parametrize("overrides", [{"pos_emb": "rotary"}, {"pos_emb": "alibi"},
                                       {"pos_emb": "rpe", "norm": "rmsnorm"},
                                       {"pos_emb": "sinusoidal", "activation": "swiglu"}])
def test_bf16_model_tracks_fp32(overrides: dict) -> None:
    """DeepSpeed casts the module to bf16: positions and masks must still be right."""
    model = GPTModel(tiny_spec(**overrides), Group()).eval()
    tokens, pos, _ = tiny_inputs()
    with torch.no_grad():
        ref = model((tokens, pos))
        low = model.to(torch.bfloat16)((tokens, pos))
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()
