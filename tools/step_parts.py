"""Which part of the model a profiled op belongs to: attention, MLP, LM head + loss, ...

``tools/profile_step.py`` sums time by kernel family (GEMM, attention, copy, ...), which says
what kind of work a step does but not where in the model: the GEMMs of the attention, of the
MLP and of the vocabulary-wide head look alike. This module answers the second question for
any ``nn.Module`` model, ours or HuggingFace's, without changing it:

* forward: :func:`mark_parts` opens a profiler range named ``part::<part>`` around the forward
  of every module :func:`module_part` classifies (and ``part::other ops`` around every other
  module that has children, so the residual adds of a block are not counted as the enclosing
  module's part); an op belongs to its innermost range;
* backward: the autograd engine runs a node's ops under ``autograd::engine::evaluate_function``,
  whose sequence number is that of the forward op that created the node, so each backward op
  belongs to the part of the forward op with the same sequence number (and forward thread);
* ranges torch opens itself: ``Optimizer.step#...`` and ``Optimizer.zero_grad#...`` are the
  optimizer; :func:`ranged` names any other callable (our fused head's loss function, which
  runs outside the model's modules).

Ops in no range and created by no forward op in one (DeepSpeed's gradient all-reduce, the
gradient clipping outside ``Optimizer.step``, ``AccumulateGrad``) are ``other ops``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it runs: tools/benchmark.py imports this module
    from torch import nn

RANGE_PREFIX = "part::"
OTHER = "other ops"
FRAMEWORK = "framework"
BACKWARD_NODE = "autograd::engine::evaluate_function:"

PART_RULES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    # order matters: the first rule that accepts a module's class name wins
    ("head + loss", lambda name: name == "OutputLayer" or name.endswith("ForCausalLM")),
    ("attention", lambda name: name.endswith("Attention")),
    ("mlp", lambda name: name.endswith("MLP")),
    ("norm", lambda name: "Norm" in name),
    ("embedding", lambda name: "Embedding" in name),
)
"""Parts by module class name: ours (``SelfAttention``, ``MLP``, ``LayerNorm``, ``FinalNorm``,
``EmbeddingLayer``, ``OutputLayer``) and HuggingFace's (``GPTNeoXAttention``, ``GPTNeoXMLP``,
``LayerNorm``, ``Embedding``; its ``...ForCausalLM`` computes the head and the loss)."""

TORCH_RANGES: tuple[tuple[str, str], ...] = (
    ("Optimizer.step#", "optimizer"),
    ("Optimizer.zero_grad#", "optimizer"),
)

PART_ORDER = ("attention", "mlp", "head + loss", "norm", "embedding", "optimizer", OTHER)


def module_part(module: nn.Module) -> str | None:
    """The part of ``module``: a rule's, ``other ops`` for an unclassified module with
    children, None for an unclassified leaf (it belongs to its parent's part)."""
    name = type(module).__name__
    for part, accepts in PART_RULES:
        if accepts(name):
            return part
    return OTHER if next(module.children(), None) is not None else None


def mark_parts(model: nn.Module) -> list[Any]:
    """Open a ``part::<part>`` profiler range around each classified module's forward; returns
    the hook handles (``handle.remove()`` takes them off)."""
    handles = []
    for module in model.modules():
        part = module_part(module)
        if part is not None:
            handles.extend(_range_hooks(module, RANGE_PREFIX + part))
    return handles


def _range_hooks(module: nn.Module, name: str) -> list[Any]:
    import torch

    open_ranges: list[Any] = []  # a stack: a module may run inside itself

    def enter(*_: Any) -> None:
        open_ranges.append(torch.profiler.record_function(name).__enter__())

    def leave(*_: Any) -> None:
        open_ranges.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def ranged(fn: Callable, part: str) -> Callable:
    """``fn`` with its calls counted as ``part``."""
    import torch

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(RANGE_PREFIX + part):
            return fn(*args, **kwargs)

    return call


def range_part(name: str) -> str | None:
    """The part a profiler range of this name stands for, if any."""
    if name.startswith(RANGE_PREFIX):
        return name[len(RANGE_PREFIX):]
    return next((part for prefix, part in TORCH_RANGES if name.startswith(prefix)), None)


def _enclosing_part(event: Any) -> str | None:
    while event is not None:
        part = range_part(event.name)
        if part is not None:
            return part
        event = event.cpu_parent
    return None


def _backward_node(event: Any) -> Any:
    while event is not None and not event.name.startswith(BACKWARD_NODE):
        event = event.cpu_parent
    return event


def assign(events: Iterable[Any]) -> list[tuple[Any, str]]:
    """``(event, part)`` for every profiler event (``profile.events()``: parents linked, in
    order of start time).

    An op records the autograd sequence number current when it starts, and only the op that
    creates a node advances it, so ops that create none (a composite ``aten::layer_norm``, a
    ``dropout`` of p=0 before it) share the number of the next op that does: of the forward
    ops with one number, the last to start created the node.
    """
    enclosed = [(event, _enclosing_part(event)) for event in events]
    created_in: dict[tuple[int, int], str] = {}
    for event, part in enclosed:
        if part is not None and event.sequence_nr >= 0 and _backward_node(event) is None:
            created_in[(event.thread, event.sequence_nr)] = part
    assigned = []
    for event, part in enclosed:
        if part is None:
            node = _backward_node(event)
            if node is not None:
                part = created_in.get((node.fwd_thread, node.sequence_nr))
        assigned.append((event, part or OTHER))
    return assigned


def is_bookkeeping(event: Any) -> bool:
    """A range or an autograd node rather than an op: its own time is Python and autograd
    engine work (``SelfAttention.forward``'s code, ``AddmmBackward0``'s dispatch), whatever
    its name says (``part::attention`` is no attention kernel)."""
    parent = event.cpu_parent
    return (range_part(event.name) is not None or event.name.startswith(BACKWARD_NODE)
            or (parent is not None and parent.name.startswith(BACKWARD_NODE)))


def by_part(assigned: Iterable[tuple[Any, str]], time_of: Callable[[Any], float],
            family_of: Callable[[str], str]) -> dict[str, dict[str, float]]:
    """``{part: {family: time}}`` summed over the events' own time, parts in ``PART_ORDER``;
    the own time of ranges and autograd nodes is the family ``framework``."""
    table: dict[str, dict[str, float]] = {}
    for event, part in assigned:
        seconds = time_of(event)
        if seconds:
            row = table.setdefault(part, {})
            family = FRAMEWORK if is_bookkeeping(event) else family_of(event.name)
            row[family] = row.get(family, 0.0) + seconds
    order = {part: i for i, part in enumerate(PART_ORDER)}
    return dict(sorted(table.items(), key=lambda kv: order.get(kv[0], len(order))))
