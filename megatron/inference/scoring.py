"""Log-likelihood of continuations, batched: the core of lm-eval's ``loglikelihood``.

A request is ``(context_ids, continuation_ids)``. The model reads ``context + continuation``
without its last token (keeping the newest ``max_length`` tokens when that is too long); the
last ``len(continuation)`` positions predict the continuation. Rows are right-padded, which
the causal model never sees, and sorted longest first so each batch wastes little padding.
"""

from __future__ import annotations

import torch

from megatron.inference.decoder import Decoder
from megatron.inference.errors import InferenceError
from megatron.inference.generation import batched


def _window(context: list[int], continuation: list[int], max_length: int) -> list[int]:
    if not continuation:
        raise InferenceError("a loglikelihood request has an empty continuation")
    if len(continuation) > max_length:
        raise InferenceError(f"continuation of {len(continuation)} tokens is longer than "
                             f"the model's seq_length = {max_length}")
    return (context + continuation)[-(max_length + 1):][:-1]


def score_batch(decoder: Decoder, requests: list[tuple[list[int], list[int]]],
                max_length: int) -> list[tuple[float, bool]]:
    """``(sum of log-probabilities, continuation is the greedy choice)`` for each request."""
    inputs = [_window(c, x, max_length) for c, x in requests]
    width = max(len(i) for i in inputs)
    tokens = torch.zeros(len(inputs), width, dtype=torch.long)  # [b, s], right-padded
    for row, ids in enumerate(inputs):
        tokens[row, : len(ids)] = torch.tensor(ids)
    logprobs = torch.log_softmax(decoder.logits(tokens), dim=-1)  # [b, s, V]
    out = []
    for row, ((_, cont), ids) in enumerate(zip(requests, inputs, strict=True)):
        span = logprobs[row, len(ids) - len(cont) : len(ids)]  # [n, V]
        target = torch.tensor(cont)
        total = span.gather(-1, target[:, None]).sum().item()
        out.append((float(total), bool((span.argmax(-1) == target).all())))
    return out


def score_requests(decoder: Decoder, requests: list[tuple[list[int], list[int]]],
                   max_length: int, batch_size: int) -> list[tuple[float, bool]]:
    """``score_batch`` over all requests, longest inputs first, answers in request order."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0] + requests[i][1]))
    answers: list[tuple[float, bool] | None] = [None] * len(requests)
    for chunk in batched(order, batch_size):
        for i, ans in zip(chunk, score_batch(decoder, [requests[i] for i in chunk], max_length),
                          strict=True):
            answers[i] = ans
    return [a for a in answers if a is not None]
