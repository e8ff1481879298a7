"""tools/step_parts.py: every profiled op of a real training step lands in the part it
belongs to, forward and backward, for our model and for HuggingFace's."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.profiler import profile

from megatron.model import ModelSpec, build_model
from megatron.parallel import ProcessGroups
from tools import step_parts
from tools.profile_step import kernel_family

BATCH, SEQ, VOCAB = 2, 32, 64


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def _profiled_step(model: torch.nn.Module, forward_loss: Callable[[], torch.Tensor]) -> list:
    """``(op name, part)`` of every op of one marked forward, backward and AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    handles = step_parts.mark_parts(model)
    try:
        with profile() as prof:
            forward_loss().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
    return [(event.name, part) for event, part in step_parts.assign(prof.events())
            if not step_parts.is_bookkeeping(event)]


def _ours() -> list:
    spec = ModelSpec(hidden_size=32, num_layers=2, num_attention_heads=4,
                     padded_vocab_size=VOCAB, seq_length=SEQ, pos_emb="rotary")
    model, loss_fn = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=3,
                                 fused_loss=True)
    loss_fn = step_parts.ranged(loss_fn, "head + loss")  # as tools/profile_step.py does
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    positions = torch.arange(SEQ).expand(BATCH, SEQ)
    labels = (torch.randint(0, VOCAB, (BATCH, SEQ)), torch.ones(BATCH, SEQ))
    return _profiled_step(model.train(), lambda: loss_fn(model((tokens, positions)), labels))


def _huggingface() -> list:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(3)
    config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128,
                           max_position_embeddings=SEQ)
    config._attn_implementation = "sdpa"
    model = GPTNeoXForCausalLM(config).train()
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
    return _profiled_step(model, lambda: model(input_ids=tokens, labels=tokens).loss)


def _parts_of(ops: list, accepts: Callable[[str], bool]) -> set[str]:
    return {part for name, part in ops if accepts(name)}


@pytest.mark.parametrize("build", [_ours, _huggingface], ids=["ours", "huggingface"])
def test_every_op_of_a_step_lands_in_its_part(build: Callable[[], list]) -> None:
    ops = build()
    assert _parts_of(ops, lambda n: kernel_family(n) == "gemm") == {
        "attention", "mlp", "head + loss"}  # no GEMM left over, forward or backward
    assert _parts_of(ops, lambda n: "scaled_dot_product" in n) == {"attention"}
    assert _parts_of(ops, lambda n: n.startswith("aten::gelu")) == {"mlp"}
    assert _parts_of(ops, lambda n: "layer_norm" in n) == {"norm"}
    assert _parts_of(ops, lambda n: n.startswith("aten::embedding")) == {"embedding"}
    assert _parts_of(ops, lambda n: "adamw" in n or n == "aten::lerp_") == {"optimizer"}
    backward = {name for name, _ in ops}
    assert {"aten::gelu_backward", "aten::native_layer_norm_backward",
            "aten::embedding_dense_backward"} <= backward  # the backward ops were seen


def test_module_part_rules() -> None:
    def module(name: str, children: int = 0) -> torch.nn.Module:
        made = type(name, (torch.nn.Module,), {})()
        for i in range(children):
            made.add_module(f"c{i}", torch.nn.Identity())
        return made

    assert step_parts.module_part(module("SelfAttention")) == "attention"
    assert step_parts.module_part(module("GPTNeoXMLP", 2)) == "mlp"
    assert step_parts.module_part(module("FinalNorm", 1)) == "norm"
    assert step_parts.module_part(module("GPTNeoXForCausalLM", 2)) == "head + loss"
    assert step_parts.module_part(module("OutputLayer", 1)) == "head + loss"
    assert step_parts.module_part(module("TransformerLayer", 3)) == step_parts.OTHER
    assert step_parts.module_part(module("Linear")) is None  # a leaf: its parent's part


def _event(name: str, parent: Any = None, seq: int = -1, thread: int = 1,
           fwd_thread: int = 0) -> SimpleNamespace:
    return SimpleNamespace(name=name, cpu_parent=parent, sequence_nr=seq, thread=thread,
                           fwd_thread=fwd_thread)


def test_backward_ops_follow_the_forward_op_of_their_thread_and_sequence_number() -> None:
    mlp = _event("part::mlp")
    forward = _event("aten::addmm", mlp, seq=7)
    node = _event("autograd::engine::evaluate_function: AddmmBackward0", seq=7, fwd_thread=1)
    grad = _event("aten::mm", _event("AddmmBackward0", node))
    elsewhere = _event("autograd::engine::evaluate_function: AddmmBackward0", seq=7,
                       fwd_thread=2)  # a forward op of another thread
    stray = _event("aten::mm", elsewhere)
    parts = dict((id(e), p) for e, p in step_parts.assign([mlp, forward, node, grad, stray]))
    assert parts[id(grad)] == "mlp" and parts[id(node)] == "mlp"
    assert parts[id(stray)] == step_parts.OTHER


def test_of_forward_ops_sharing_a_sequence_number_the_last_one_made_the_node() -> None:
    dropout = _event("aten::dropout", _event("part::embedding"), seq=1)  # makes no node
    norm = _event("aten::native_layer_norm", _event("part::norm"), seq=1)
    node = _event("autograd::engine::evaluate_function: NativeLayerNormBackward0", seq=1,
                  fwd_thread=1)
    grad = _event("aten::native_layer_norm_backward", node)
    parts = dict((id(e), p) for e, p in step_parts.assign([dropout, norm, node, grad]))
    assert parts[id(grad)] == "norm"


def test_by_part_counts_ranges_and_nodes_as_framework_in_part_order() -> None:
    attention = _event("part::attention")
    sdpa = _event("aten::_scaled_dot_product_flash_attention_for_cpu", attention)
    step = _event("Optimizer.step#AdamW.step")
    adam = _event("aten::_fused_adamw_", step)
    own = {id(attention): 2.0, id(sdpa): 5.0, id(step): 1.0, id(adam): 3.0}
    table = step_parts.by_part(step_parts.assign([step, adam, attention, sdpa]),
                               lambda e: own[id(e)], kernel_family)
    assert table == {"attention": {"framework": 2.0, "attention": 5.0},
                     "optimizer": {"framework": 1.0, "optimizer": 3.0}}
    assert list(table) == ["attention", "optimizer"]
