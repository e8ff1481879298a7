"""lm-evaluation-harness adapter: our model as an ``lm_eval.api.model.LM``.

lm-eval sees one process (rank 0 of 1) on every worker, so each worker runs the harness's
bookkeeping identically; inside each request method the requests are split among
data-parallel replicas, batched, scored, and gathered back in order on every rank. All
ranks of one tensor-parallel group score the same block, so their collectives stay in step.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from megatron.inference.decoder import Decoder
from megatron.inference.dp import gather_blocks, my_block
from megatron.inference.generation import (
    GenerationLimits,
    TokenSync,
    batched,
    generate_tokens,
)
from megatron.inference.sampling import SamplingParams
from megatron.inference.setup import InferenceModel, tp_sync
from megatron.parallel.groups import Group

DEFAULT_MAX_GEN_TOKS = 256
"""lm-eval's usual ``max_gen_toks`` when a task does not set it."""


class NeoXEvalAdapter(LM):
    """Scores lm-eval requests with a ``Decoder``.

    Args:
        decoder: the model's step interface.
        tokenizer: ``tokenize``, ``detokenize``, ``eod``.
        max_length: the model's ``seq_length``.
        batch_size: requests per forward pass.
        dp: data-parallel group that shares the requests.
        generator: random stream for sampled ``generate_until`` requests.
        sync: tensor-parallel token broadcast for generation.
    """

    def __init__(self, decoder: Decoder, tokenizer: Any, *, max_length: int, batch_size: int,
                 dp: Group | None = None, generator: torch.Generator | None = None,
                 sync: TokenSync | None = None) -> None:
        super().__init__()
        self.decoder, self.tokenizer = decoder, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.dp = dp or Group()
        self.generator, self.sync = generator, sync

    @classmethod
    def from_inference_model(cls, im: InferenceModel, batch_size: int) -> NeoXEvalAdapter:
        gen = torch.Generator().manual_seed(int(im.args.seed))
        return cls(im.decoder(), im.tokenizer, max_length=im.spec.seq_length,
                   batch_size=batch_size, dp=im.groups.dp, generator=gen,
                   sync=tp_sync(im.groups.tp))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's convention: trailing spaces of the context move to the continuation."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx = self.tokenizer.tokenize(context) if context else [self.tokenizer.eod]
        return ctx, self.tokenizer.tokenize(continuation)

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        from megatron.inference.scoring import score_requests

        local = score_requests(self.decoder, my_block(pairs, self.dp), self.max_length,
                               self.batch_size)
        return gather_blocks(local, self.dp)

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        return self._score([self.encode_pair(*req.args) for req in requests])

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """Whole-document log-likelihood over disjoint windows of ``max_length`` tokens."""
        pairs, owner = [], []
        for doc, req in enumerate(requests):
            ids = self.tokenizer.tokenize(req.args[0])
            for window in get_rolling_token_windows(ids, self.tokenizer.eod, self.max_length, 1):
                pairs.append(make_disjoint_window(window))
                owner.append(doc)
        totals = [0.0] * len(requests)
        for doc, (logprob, _) in zip(owner, self._score(pairs), strict=True):
            totals[doc] += logprob
        return totals

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Generate per request until a stop string, end-of-document or ``max_gen_toks``."""
        jobs = [(i, req.args[0], dict(req.args[1] or {})) for i, req in enumerate(requests)]
        local = [self._generate_group(group) for group in _same_kwargs(my_block(jobs, self.dp))]
        flat = gather_blocks([item for group in local for item in group], self.dp)
        return [text for _, text in sorted(flat)]

    def _generate_group(self, group: list[tuple[int, str, dict]]) -> list[tuple[int, str]]:
        kwargs = group[0][2]
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        limits = GenerationLimits(max_new, self.max_length, frozenset({self.tokenizer.eod}))
        keep = max(1, self.max_length - max_new)
        out = []
        for chunk in batched(group, self.batch_size):
            prompts = [(self.tokenizer.tokenize(ctx) or [self.tokenizer.eod])[-keep:]
                       for _, ctx, _ in chunk]
            done = generate_tokens(self.decoder, prompts, limits, _sampling(kwargs),
                                   self.generator, self.sync)
            for (i, _, _), (ids, _) in zip(chunk, done, strict=True):
                out.append((i, _cut(self.tokenizer.detokenize(ids), until)))
        return out


def _sampling(kwargs: dict[str, Any]) -> SamplingParams:
    """Greedy unless the task asks for sampling (``do_sample`` or a positive temperature)."""
    temperature = float(kwargs.get("temperature", 0.0) or 0.0)
    if not kwargs.get("do_sample", False) and temperature == 0.0:
        return SamplingParams()
    return SamplingParams(temperature=temperature or 1.0, top_k=int(kwargs.get("top_k", 0)),
                          top_p=float(kwargs.get("top_p", 0.0) or 0.0))


def _same_kwargs(jobs: list[tuple[int, str, dict]]) -> list[list[tuple[int, str, dict]]]:
    """Group ``(index, context, kwargs)`` requests by identical generation settings."""
    groups: dict[str, list[tuple[int, str, dict]]] = {}
    for job in jobs:
        groups.setdefault(json.dumps(job[2], sort_keys=True, default=str), []).append(job)
    return list(groups.values())


def _cut(text: str, until: list[str]) -> str:
    """Text before the first occurrence of any stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
