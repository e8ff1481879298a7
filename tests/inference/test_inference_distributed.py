"""Generation at TP=2 equals TP=1, and evaluation requests split over DP=2 (gloo, 2 ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megatron.inference.decoder import CachedDecoder, RecomputeDecoder
from megatron.inference.generation import GenerationLimits, generate_tokens
from megatron.inference.sampling import SamplingParams
from megatron.inference.scoring import score_requests
from megatron.inference.setup import tp_sync
from megatron.model import build_model
from megatron.parallel import ParallelLayout, ProcessGroups
from tests.distributed import run_distributed
from tests.inference.conftest import TinyCharTokenizer, tiny_spec

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

VOCAB = TinyCharTokenizer.vocab_size
PROMPTS = [[5], [2, 9, 4, 4, 8, 1, 30], [11, 3, 3]]
LIMITS = GenerationLimits(maximum_tokens=6, seq_length=32)


def check_tp2_generation(rank: int, world_size: int) -> None:
    torch.set_num_threads(1)
    groups = ProcessGroups.build(ParallelLayout(tp=2, pp=1, dp=1, rank=rank))
    spec = tiny_spec()
    dense, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=7)
    sharded, _ = build_model(spec, groups, pipe_parallel_size=0, seed=7)
    dense, sharded = dense.eval(), sharded.eval()
    for cls in (RecomputeDecoder, CachedDecoder):
        expected = generate_tokens(cls(dense, ProcessGroups.single().tp, VOCAB), PROMPTS,
                                   LIMITS, SamplingParams())
        got = generate_tokens(cls(sharded, groups.tp, VOCAB), PROMPTS, LIMITS,
                              SamplingParams(), sync=tp_sync(groups.tp))
        assert got == expected, f"{cls.__name__}: TP=2 greedy differs from TP=1"
    # Sampling with a different generator on each rank: the broadcast makes them agree.
    gen = torch.Generator().manual_seed(100 + rank)
    sampled = generate_tokens(CachedDecoder(sharded, groups.tp, VOCAB), PROMPTS, LIMITS,
                              SamplingParams(temperature=1.0), gen, tp_sync(groups.tp))
    both: list[object] = [None, None]
    dist.all_gather_object(both, sampled)
    assert both[0] == both[1]


def check_dp2_scoring(rank: int, world_size: int) -> None:
    from eval_tasks.eval_adapter import NeoXEvalAdapter

    torch.set_num_threads(1)
    groups = ProcessGroups.build(ParallelLayout(tp=1, pp=1, dp=2, rank=rank))
    model, _ = build_model(tiny_spec(), ProcessGroups.single(), pipe_parallel_size=0, seed=7)
    decoder = RecomputeDecoder(model.eval(), groups.tp, VOCAB)
    pairs = [([1, 2, 3], [4]), ([5], [6, 7, 8]), ([9, 9], [1]), ([3], [3, 3]), ([2], [2])]
    expected = score_requests(decoder, pairs, 32, batch_size=2)
    calls: list[int] = []
    original = decoder.logits
    decoder.logits = lambda tokens: (calls.append(tokens.shape[0]), original(tokens))[1]

    class Req:
        def __init__(self, context: str, continuation: str) -> None:
            self.args = (context, continuation)

    adapter = NeoXEvalAdapter(decoder, _IdTokenizer(), max_length=32, batch_size=2,
                              dp=groups.dp)
    got = adapter.loglikelihood([Req(_text(c), _text(x)) for c, x in pairs])
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-5)
    assert sum(calls) == (3 if rank == 0 else 2), "each replica scores only its block"


class _IdTokenizer:
    """Space-separated integers as token ids (so the test pairs round-trip exactly)."""

    eod = 0

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def detokenize(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def _text(ids: list[int]) -> str:
    return " ".join(map(str, ids)) + " "


def test_tp2_generation_equals_tp1() -> None:
    run_distributed(check_tp2_generation, world_size=2, timeout=150)


def test_dp2_scoring_splits_requests_and_gathers_in_order() -> None:
    run_distributed(check_dp2_scoring, world_size=2, timeout=150)
