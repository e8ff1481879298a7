"""Sampling rules on hand-made distributions."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.inference.errors import InferenceError
from megatron.inference.sampling import SamplingParams, filter_top_k, filter_top_p, sample_next

NEG = float("-inf")


def test_greedy_when_all_zero_picks_argmax() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9], [5.0, 0.0, 0.0, 4.0]])
    assert SamplingParams().greedy
    assert sample_next(logits, SamplingParams()).tolist() == [1, 0]


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert filter_top_k(logits, 2).tolist() == [[NEG, 4.0, 3.0, NEG]]
    assert filter_top_k(logits, 0).tolist() == logits.tolist()


def test_top_p_masks_exactly_the_tail_beyond_p() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05 in a shuffled order: cumulative mass before each
    # ranked token is 0, 0.5, 0.8, 0.95, so with p = 0.7 only the two most likely stay.
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    out = filter_top_p(probs.log(), 0.7)
    kept = torch.isfinite(out)[0].tolist()
    assert kept == [False, True, False, True]
    # p = 0.85 also keeps the third (mass before it is 0.8 <= 0.85)
    assert torch.isfinite(filter_top_p(probs.log(), 0.85))[0].tolist() == [True, True, False,
                                                                             True]
    # p = 0.4: the most likely token alone already passes p
    assert torch.isfinite(filter_top_p(probs.log(), 0.4))[0].tolist() == [False, True, False,
                                                                            False]


def test_top_p_sampling_never_draws_from_the_tail() -> None:
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    drawn = sample_next(probs.log(), SamplingParams(top_p=0.7), gen)
    counts = torch.bincount(drawn, minlength=4).tolist()
    assert counts[0] == counts[2] == 0
    assert abs(counts[1] / 4000 - 0.5 / 0.8) < 0.03  # renormalised over the kept mass


def test_top_k_one_equals_greedy() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 50, generator=gen)
    drawn = sample_next(logits, SamplingParams(temperature=1.3, top_k=1), gen)
    assert drawn.tolist() == logits.argmax(-1).tolist()


def test_temperature_scales_the_distribution() -> None:
    # logits log(0.8), log(0.2) at temperature 2 give weights sqrt(0.8), sqrt(0.2): p0 = 2/3.
    logits = torch.tensor([[math.log(0.8), math.log(0.2)]]).expand(6000, 2)
    gen = torch.Generator().manual_seed(2)
    drawn = sample_next(logits, SamplingParams(temperature=2.0), gen)
    assert abs((drawn == 0).float().mean().item() - 2 / 3) < 0.025
    cold = sample_next(logits, SamplingParams(temperature=0.05), gen)
    assert (cold == 0).all()  # 0.8^20 vs 0.2^20: token 1 has probability ~1e-12


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_k": -2}, {"top_p": 1.5}])
def test_invalid_settings_raise(kwargs: dict) -> None:
    with pytest.raises(InferenceError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)
