"""Tensor parallelism: the tiny model at TP=2 equals TP=1 from the same seed (gloo, 2 ranks)."""

from __future__ import annotations

import pytest
import torch

from megatron.model import build_model
from megatron.model.init import gather_full_parameter
from megatron.parallel import ParallelLayout, ProcessGroups
from megatron.parallel.mappings import gather_along
from megatron.parallel.random import RNGTracker
from tests.distributed import run_distributed
from tests.model.conftest import tiny_inputs, tiny_spec

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

CONFIGS = [
    {},  # learned positions, LayerNorm, GELU, multi-head, tied
    {"pos_emb": "rotary", "rotary_pct": 0.5, "norm": "rmsnorm", "activation": "swiglu",
     "num_kv_heads": 2, "tie_word_embeddings": False, "use_bias_in_attn_linear": False},
    {"pos_emb": "alibi", "gpt_j_residual": True, "activation": "geglu",
     "use_qk_layernorm": True},
    {"pos_emb": "rpe", "norm": "scalenorm", "gpt_j_residual": True, "gpt_j_tied": True,
     "attention_config": ("local", "global"), "sliding_window_width": 5},
    {"sequence_parallel": True},
    {"sequence_parallel": True, "pos_emb": "rotary", "norm": "rmsnorm", "activation": "swiglu",
     "num_kv_heads": 2, "tie_word_embeddings": False, "gpt_j_residual": True,
     "use_qk_layernorm": True},
]
TOL = {"atol": 1e-5, "rtol": 0.0}


def _run(model: torch.nn.Module, loss_fn: object, labels: torch.Tensor,
         inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(inputs)
    mask = torch.ones_like(labels, dtype=torch.float32)
    mask[:, :3] = 0.0
    loss = loss_fn(logits, (labels, mask))
    loss.backward()
    return logits, loss


def check_tp2_equals_tp1(rank: int, world_size: int) -> None:
    groups = ProcessGroups.build(ParallelLayout(tp=2, pp=1, dp=1, rank=rank))
    tokens, pos, labels = tiny_inputs()
    for overrides in CONFIGS:
        spec = tiny_spec(**overrides)
        dense, dense_loss_fn = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0)
        tp, tp_loss_fn = build_model(spec, groups, pipe_parallel_size=0)
        ref_logits, ref_loss = _run(dense, dense_loss_fn, labels, (tokens, pos))
        logits, loss = _run(tp, tp_loss_fn, labels, (tokens, pos))
        assert logits.shape[-1] == 32, "each rank holds half of the vocabulary"
        torch.testing.assert_close(gather_along(logits.detach(), -1, groups.tp),
                                   ref_logits.detach(), **TOL)
        torch.testing.assert_close(loss.detach(), ref_loss.detach(), **TOL)
        ref_params = dict(dense.named_parameters())
        for name, param in tp.named_parameters():
            full = gather_full_parameter(param, groups.tp)
            assert torch.equal(full, ref_params[name].detach()), f"{overrides}: weight {name}"
            grad = gather_full_parameter(param, groups.tp, param.grad)
            torch.testing.assert_close(grad, ref_params[name].grad, **TOL,
                                       msg=f"{overrides}: grad {name}")


def test_tp2_matches_tp1_logits_loss_weights_and_gradients() -> None:
    run_distributed(check_tp2_equals_tp1, 2, 150.0)


def check_tp2_checkpointing_replays_forked_dropout(rank: int, world_size: int) -> None:
    groups = ProcessGroups.build(ParallelLayout(tp=2, pp=1, dp=1, rank=rank))
    spec = tiny_spec(num_layers=3, attention_dropout=0.2, hidden_dropout=0.1,
                     pos_emb="rotary", activation="swiglu", num_kv_heads=2)
    tokens, pos, labels = tiny_inputs()
    grads = []
    for ckpt in (False, True):
        tracker = RNGTracker.from_seed(11, tp_rank=groups.tp.rank)
        model, loss_fn = build_model(spec, groups, pipe_parallel_size=0, rng_tracker=tracker,
                                     activation_checkpointing=ckpt, checkpoint_num_layers=1)
        _run(model, loss_fn, labels, (tokens, pos))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, **TOL, msg=name)


def test_tp2_activation_checkpointing_with_rng_tracker_gives_same_gradients() -> None:
    run_distributed(check_tp2_checkpointing_replays_forked_dropout, 2, 150.0)
