"""ModelSpec.from_args on the real NeoXArgs, from a GPT-NeoX-style config dict."""

from __future__ import annotations

import torch

from megatron.model import ModelSpec, build_model, num_parameters
from megatron.parallel import ProcessGroups
from tests.model.conftest import tiny_inputs

NEOX_CONFIG = {
    "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_kv_heads": 2,
    "seq_length": 16, "max_position_embeddings": 16, "pos_emb": "rotary", "rotary_pct": 0.25,
    "norm": "rmsnorm", "rms_norm_epsilon": 1.0e-6, "activation": "swiglu",
    "attention_config": [[["global", "local"], "all"]], "no_weight_tying": True,
    "gpt_j_residual": True, "use_bias_in_norms": False,
    "train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
}


def test_spec_from_neox_args_builds_a_working_model() -> None:
    from megatron.neox_arguments import NeoXArgs

    spec = ModelSpec.from_args(NeoXArgs.from_dict(NEOX_CONFIG), padded_vocab_size=64)
    assert spec.attention_config == ("global", "local")
    assert (spec.rotary_dims, spec.norm_eps, spec.kv_heads, spec.mlp_width) == (4, 1e-6, 2, 85)
    assert spec.gpt_j_residual and not spec.tie_word_embeddings
    model, loss_fn = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0)
    assert sum(p.numel() for p in model.parameters()) == num_parameters(spec)
    tokens, pos, labels = tiny_inputs()
    loss = loss_fn(model((tokens, pos)), (labels, torch.ones(2, 16)))
    assert abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.5  # near-uniform init
