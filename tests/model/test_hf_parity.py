"""Parity with an independent implementation: HuggingFace ``GPTNeoXForCausalLM``.

Our tiny rotary/LayerNorm/GELU model, its weights renamed as FORMATS.md describes, must give
the same logits as transformers' GPT-NeoX, for both residual forms.
"""

from __future__ import annotations

import pytest
import torch

from megatron.model.gpt import GPTModel
from megatron.parallel.groups import Group
from tests.model.conftest import tiny_inputs, tiny_spec

LAYER_NAMES = {
    "input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
    "attention.query_key_value": "attention.query_key_value",
    "attention.dense": "attention.dense", "mlp.linear1": "mlp.dense_h_to_4h",
    "mlp.linear2": "mlp.dense_4h_to_h",
}


def _to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    out = {"gpt_neox.embed_in.weight": state["sequential.0.word_embeddings.weight"],
           "embed_out.weight": state[f"sequential.{num_layers + 4}.final_linear.weight"]}
    for kind in ("weight", "bias"):
        out[f"gpt_neox.final_layer_norm.{kind}"] = state[f"sequential.{num_layers + 3}.norm.{kind}"]
    for i in range(num_layers):
        for ours, theirs in LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                source = state[f"sequential.{i + 2}.{ours}.{kind}"]
                out[f"gpt_neox.layers.{i}.{theirs}.{kind}"] = source
    return out


@pytest.mark.parametrize("parallel_residual", [False, True])
def test_logits_match_transformers_gpt_neox(parallel_residual: bool) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    spec = tiny_spec(pos_emb="rotary", rotary_pct=0.5, rotary_emb_base=1000,
                     gpt_j_residual=parallel_residual, tie_word_embeddings=False, norm_eps=1e-5)
    ours = GPTModel(spec, Group(), seed=3).eval()
    config = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128, hidden_act="gelu",
                           rotary_pct=0.5, rotary_emb_base=1000, max_position_embeddings=16,
                           layer_norm_eps=1e-5, use_parallel_residual=parallel_residual,
                           tie_word_embeddings=False, attn_implementation="eager")
    theirs = GPTNeoXForCausalLM(config).eval()
    state = _to_hf(ours.state_dict(), 2)
    if "lm_head.weight" in theirs.state_dict():  # transformers 5 renames embed_out on load
        state["lm_head.weight"] = state.pop("embed_out.weight")
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k or "masked_bias" in k for k in missing), missing
    tokens, pos, _ = tiny_inputs()
    with torch.no_grad():
        expected = theirs(input_ids=tokens).logits
        got = ours((tokens, pos))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
