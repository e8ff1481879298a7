"""Batched generation against a plain one-prompt argmax loop on a tiny random model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from megatron.inference.decoder import CachedDecoder, RecomputeDecoder
from megatron.inference.errors import InferenceError
from megatron.inference.generation import (
    GenerationLimits,
    TextGenerator,
    generate_tokens,
)
from megatron.inference.sampling import SamplingParams
from megatron.parallel import ProcessGroups
from tests.inference.conftest import TinyCharTokenizer, tiny_model

VOCAB = TinyCharTokenizer.vocab_size
MakeDecoder = Callable[[torch.nn.Module], RecomputeDecoder]


def argmax_loop(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Reference: full forward each step, argmax over the real (unpadded) vocabulary."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            x = torch.tensor([ids])
            logits = model((x, torch.arange(len(ids))[None]))[0, -1, :VOCAB]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def until_eod(ids: list[int]) -> list[int]:
    return ids[: ids.index(0)] if 0 in ids else ids


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.set_num_threads(1)
    return tiny_model()


@pytest.fixture(params=[RecomputeDecoder, CachedDecoder], ids=["recompute", "kv_cache"])
def decoder_cls(request: pytest.FixtureRequest) -> type[RecomputeDecoder]:
    return request.param


@pytest.fixture
def decoder_for(decoder_cls: type[RecomputeDecoder]) -> MakeDecoder:
    """Build the parametrised decoder (recompute or KV cache) over a model."""
    return lambda model: decoder_cls(model, ProcessGroups.single().tp, VOCAB)


def test_greedy_equals_argmax_loop(model: torch.nn.Module, decoder_for: MakeDecoder) -> None:
    prompt = [3, 7, 1, 12]
    limits = GenerationLimits(maximum_tokens=6, seq_length=32)
    [(ids, stopped)] = generate_tokens(decoder_for(model), [prompt], limits, SamplingParams())
    assert ids == argmax_loop(model, prompt, 6)
    assert not stopped


def test_batched_prompts_of_different_lengths_equal_each_alone(model: torch.nn.Module,
                                                               decoder_for: MakeDecoder) -> None:
    prompts = [[5], [2, 9, 4, 4, 8, 1, 30], [11, 3, 3]]
    limits = GenerationLimits(maximum_tokens=5, seq_length=32)
    together = generate_tokens(decoder_for(model), prompts, limits, SamplingParams())
    for prompt, (ids, _) in zip(prompts, together, strict=True):
        assert ids == argmax_loop(model, prompt, 5)


def test_generation_stops_at_seq_length(model: torch.nn.Module, decoder_for: MakeDecoder) -> None:
    limits = GenerationLimits(maximum_tokens=50, seq_length=10)
    [(a, _), (b, _)] = generate_tokens(decoder_for(model), [[1, 2, 3], [4] * 8], limits,
                                       SamplingParams())
    assert (len(a), len(b)) == (7, 2)
    assert a == argmax_loop(model, [1, 2, 3], 7)


def test_stop_token_ends_a_row_and_is_not_returned(model: torch.nn.Module,
                                                   decoder_for: MakeDecoder) -> None:
    prompt = [3, 7, 1, 12]
    free = argmax_loop(model, prompt, 8)
    stop = free[3]
    cut = free.index(stop)
    limits = GenerationLimits(maximum_tokens=8, seq_length=32, stop_tokens=frozenset({stop}))
    [(ids, stopped), (other, _)] = generate_tokens(decoder_for(model), [prompt, [9, 9]], limits,
                                                   SamplingParams())
    assert stopped and ids == free[:cut]
    expected_other = argmax_loop(model, [9, 9], 8)
    if stop in expected_other:
        expected_other = expected_other[: expected_other.index(stop)]
    assert other == expected_other


def test_padded_vocabulary_rows_are_never_sampled(model: torch.nn.Module,
                                                  decoder_for: MakeDecoder) -> None:
    gen = torch.Generator().manual_seed(0)
    limits = GenerationLimits(maximum_tokens=20, seq_length=32)
    outs = generate_tokens(decoder_for(model), [[1]] * 8, limits,
                           SamplingParams(temperature=5.0), gen)
    assert all(0 <= t < VOCAB for ids, _ in outs for t in ids)


def test_text_generator_results(model: torch.nn.Module, decoder_for: MakeDecoder) -> None:
    tok = TinyCharTokenizer()
    gen = TextGenerator(decoder_for(model), tok, GenerationLimits(4, 16), SamplingParams(),
                        batch_size=2)
    long_prompt = "a" * 16
    results = gen.generate(["hello", "", long_prompt])
    first, empty, too_long = results
    assert first.context == "hello"
    assert first.tokens == until_eod(argmax_loop(model, tok.tokenize("hello"), 4))
    assert first.text == tok.detokenize(first.tokens) and first.length == 4
    assert first.finished == (0 in argmax_loop(model, tok.tokenize("hello"), 4))
    assert first.duration_seconds > 0
    assert empty.tokens == until_eod(argmax_loop(model, [tok.eod], 4))
    assert too_long.length == 0 and "seq_length" in too_long.message
    record = first.to_json()
    assert set(record) == {"context", "text", "length", "finished", "message",
                           "duration_seconds"}


def test_prompt_as_long_as_the_sequence_is_rejected(model: torch.nn.Module,
                                                    decoder_for: MakeDecoder) -> None:
    with pytest.raises(InferenceError, match="seq_length"):
        generate_tokens(decoder_for(model), [[1] * 32], GenerationLimits(4, 32),
                        SamplingParams())
