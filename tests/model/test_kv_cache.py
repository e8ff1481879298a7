"""KV cache: cached decoding equals recomputing the whole sequence, for every model variant.

The oracle is the model's plain full forward (``model((tokens, arange))``), which the other
model tests check against HF GPT-NeoX and the reference kernel; the cache must reproduce it
while running only the new positions.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from megatron.model import build_model
from megatron.model.kv_cache import (
    EMBED_AT,
    ROTATE_AT,
    KVCache,
    KVCacheError,
    left_padded_batch,
)
from megatron.model.positional import POSITIONAL
from megatron.parallel import ParallelLayout, ProcessGroups
from megatron.parallel.mappings import gather_along
from tests.distributed import run_distributed
from tests.model.conftest import tiny_spec

TOL = {"atol": 1e-5, "rtol": 0.0}
# Larger weights than the default 0.02 so the next-token logits are well separated.
BASE = {"init_method_std": 0.2}
CONFIGS = {
    "rotary": {"pos_emb": "rotary", "rotary_pct": 0.5},
    "learned": {"pos_emb": "learned"},
    "sinusoidal": {"pos_emb": "sinusoidal"},
    "alibi": {"pos_emb": "alibi"},
    "rpe": {"pos_emb": "rpe", "rpe_num_buckets": 8, "rpe_max_distance": 12},
    "none": {"pos_emb": "none"},
    "gqa": {"pos_emb": "rotary", "num_kv_heads": 2, "activation": "swiglu", "norm": "rmsnorm",
            "tie_word_embeddings": False},
    "mqa": {"pos_emb": "rotary", "num_kv_heads": 1, "use_qk_layernorm": True},
    "local_window": {"pos_emb": "alibi", "attention_config": ("local", "global"),
                     "sliding_window_width": 3},
    "parallel_residual": {"pos_emb": "rotary", "gpt_j_residual": True, "gpt_j_tied": True},
    "reference_kernel": {"pos_emb": "rpe", "attention_kernel": "reference", "num_kv_heads": 2,
                         "attention_config": ("local", "local"), "sliding_window_width": 4,
                         "apply_query_key_layer_scaling": True},
}


def make_model(overrides: dict[str, object], dtype: torch.dtype = torch.float32,
               ) -> torch.nn.Module:
    model, _ = build_model(tiny_spec(**BASE, **overrides), ProcessGroups.single(),
                           pipe_parallel_size=0, seed=7)
    return model.to(dtype).eval()


def prompt_tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def greedy_recompute(model: torch.nn.Module, prompt: torch.Tensor,
                     steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The no-cache argmax loop: the whole sequence again at every step."""
    tokens, step_logits = prompt, []
    for _ in range(steps):
        b, s = tokens.shape
        last = model((tokens, torch.arange(s).expand(b, s)))[:, -1]  # [b, V]
        step_logits.append(last)
        tokens = torch.cat((tokens, last.argmax(-1, keepdim=True)), dim=1)
    return tokens[:, prompt.shape[1]:], torch.stack(step_logits, dim=1)


@torch.no_grad()
def greedy_cached(model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                  steps: int, full_vocab: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt once, then one token per call; returns (new tokens, their logits).

    ``full_vocab`` gathers a tensor-parallel rank's vocabulary block before the argmax.
    """
    cache = KVCache.allocate(model, tokens.shape[0], tokens.shape[1] + steps - 1)
    last = full_vocab(model((tokens, positions), cache=cache)[:, -1])
    new, step_logits = [], []
    for step in range(steps):
        step_logits.append(last)
        new.append(last.argmax(-1, keepdim=True))
        if step + 1 < steps:  # the last token needs no forward pass
            last = full_vocab(model((new[-1], cache.next_position_ids()), cache=cache)[:, -1])
    return torch.cat(new, dim=1), torch.stack(step_logits, dim=1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_greedy_generation_equals_recompute(name: str) -> None:
    model = make_model(CONFIGS[name])
    prompt = prompt_tokens(2, 5)
    ref_tokens, ref_logits = greedy_recompute(model, prompt, 8)
    tokens, logits = greedy_cached(model, prompt, torch.arange(5).expand(2, 5), 8)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    assert len(set(ref_tokens.flatten().tolist())) > 1, "degenerate oracle: one token only"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_incremental_logits_equal_full_forward_at_every_position(name: str) -> None:
    model = make_model(CONFIGS[name])
    tokens = prompt_tokens(2, 12, seed=1)
    positions = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        full = model((tokens, positions))  # [2, 12, V]
        cache = KVCache.allocate(model, 2, 12)
        chunks = [(0, 4), (4, 5), (5, 8), (8, 9), (9, 10), (10, 12)]  # prompt, 1s and blocks
        pieces = [model((tokens[:, a:b], positions[:, a:b]), cache=cache) for a, b in chunks]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)


BATCHED = ["rotary", "learned", "sinusoidal", "local_window", "rpe", "gqa", "reference_kernel"]


@pytest.mark.parametrize("name", BATCHED)
def test_left_padded_batch_equals_each_prompt_alone(name: str) -> None:
    model = make_model(CONFIGS[name])
    prompts = [[5, 9, 2], [1, 33, 8, 60, 4, 17, 3], [40, 41, 42, 43, 44]]
    tokens, positions = left_padded_batch(prompts, pad_id=0)
    batched_tokens, batched_logits = greedy_cached(model, tokens, positions, 6)
    for row, prompt in enumerate(prompts):
        alone_tokens, alone_logits = greedy_recompute(model, torch.tensor([prompt]), 6)
        assert torch.equal(batched_tokens[row], alone_tokens[0]), f"row {row}"
        torch.testing.assert_close(batched_logits[row], alone_logits[0], **TOL)


def test_left_padded_batch_layout() -> None:
    tokens, positions = left_padded_batch([[7, 8], [1, 2, 3, 4]], pad_id=99)
    assert tokens.tolist() == [[99, 99, 7, 8], [1, 2, 3, 4]]
    assert positions.tolist() == [[-1, -1, 0, 1], [0, 1, 2, 3]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_padding_stays_finite_in_half_precision(dtype: torch.dtype) -> None:
    # Padding queries see only padding keys; a -inf row there would give NaN that leaks into
    # real rows through 0 * NaN in the next layer's attention.
    model = make_model(CONFIGS["alibi"], dtype)
    tokens, positions = left_padded_batch([[3], [1, 2, 3, 4, 5, 6]], pad_id=0)
    with torch.no_grad():
        cache = KVCache.allocate(model, 2, 8)
        logits = model((tokens, positions), cache=cache)
        step = model((logits[:, -1:].argmax(-1), cache.next_position_ids()), cache=cache)
    assert torch.isfinite(logits).all() and torch.isfinite(step).all()


def test_decoding_runs_one_position_per_step_and_caches_unexpanded_kv_heads() -> None:
    model = make_model(CONFIGS["gqa"])
    seen: list[tuple[int, ...]] = []
    hook = model.sequential[2].attention.query_key_value.register_forward_hook(
        lambda module, args, out: seen.append(tuple(args[0].shape)))
    greedy_cached(model, prompt_tokens(3, 5), torch.arange(5).expand(3, 5), 4)
    hook.remove()
    assert seen == [(3, 5, 32)] + [(3, 1, 32)] * 3
    cache = KVCache.allocate(model, 3, 10)
    assert len(cache.keys) == 2
    assert cache.keys[0].shape == (3, 10, 2, 8)  # 2 kv heads of 32 / 4 = 8 channels
    assert cache.values[1].shape == (3, 10, 2, 8)


def test_positions_next_ids_rewind_and_reset() -> None:
    model = make_model(CONFIGS["rotary"])
    tokens, positions = left_padded_batch([[4, 5], [6, 7, 8]], pad_id=0)
    with torch.no_grad():
        cache = KVCache.allocate(model, 2, 6)
        model((tokens, positions), cache=cache)
        assert cache.positions.tolist() == [[-1, 0, 1, -1, -1, -1], [0, 1, 2, -1, -1, -1]]
        assert cache.next_position_ids().tolist() == [[2], [3]]
        nxt = torch.tensor([[9], [10]])
        first = model((nxt, cache.next_position_ids()), cache=cache)
        cache.rewind(3)
        assert cache.length == 3 and cache.positions[:, 3].tolist() == [-1, -1]
        again = model((nxt, cache.next_position_ids()), cache=cache)
        cache.reset()
        assert cache.length == 0
        model((tokens, positions), cache=cache)
        third = model((nxt, cache.next_position_ids()), cache=cache)
    torch.testing.assert_close(again, first, **TOL)
    torch.testing.assert_close(third, first, **TOL)


def test_misuse_raises_clear_errors() -> None:
    model = make_model(CONFIGS["learned"])
    prompt, pos = prompt_tokens(2, 5), torch.arange(5).expand(2, 5)
    cache = KVCache.allocate(model, 2, 6)
    with torch.no_grad():
        model((prompt, pos), cache=cache)
        with pytest.raises(KVCacheError, match="5 of 6 slots; 2 more do not fit"):
            model((prompt[:, :2], pos[:, :2] + 5), cache=cache)
        with pytest.raises(KVCacheError, match=r"must both be \[2, s\]"):
            model((prompt[:1, :1], pos[:1, :1]), cache=cache)
        with pytest.raises(KVCacheError, match="position id 6 is not below max_length = 6"):
            model((prompt[:, :1], pos[:, :1] + 6), cache=cache)
    with pytest.raises(KVCacheError, match="cache is empty"):
        KVCache.allocate(model, 2, 6).next_position_ids()
    with pytest.raises(KVCacheError, match="cannot rewind to length 6"):
        cache.rewind(6)
    with pytest.raises(KVCacheError, match="empty prompt"):
        left_padded_batch([[1], []], pad_id=0)


def test_unsupported_models_are_rejected() -> None:
    sp_model, _ = build_model(tiny_spec(sequence_parallel=True), ProcessGroups.single(),
                              pipe_parallel_size=0)
    with pytest.raises(KVCacheError, match="sequence_parallel"):
        KVCache.allocate(sp_model, 1, 4)
    with pytest.raises(KVCacheError, match="plain GPTModel"):
        KVCache.allocate(torch.nn.Linear(2, 2), 1, 4)


def test_every_positional_encoding_has_a_cached_form() -> None:
    assert ROTATE_AT.keys() == POSITIONAL.keys()
    input_stage = [k for k in POSITIONAL.keys() if POSITIONAL.get(k).stage == "input"]
    assert EMBED_AT.keys() == sorted(input_stage)



def check_tp2_cached_generation_equals_tp1(rank: int, world_size: int) -> None:
    groups = ProcessGroups.build(ParallelLayout(tp=2, pp=1, dp=1, rank=rank))
    tokens, positions = left_padded_batch([[5, 9, 2], [1, 33, 8, 60, 4, 17, 3]], pad_id=0)
    for name in ("gqa", "local_window", "rpe"):
        dense_tokens, dense_logits = greedy_cached(make_model(CONFIGS[name]), tokens,
                                                   positions, 5)
        model, _ = build_model(tiny_spec(**BASE, **CONFIGS[name]), groups,
                               pipe_parallel_size=0, seed=7)
        cache = KVCache.allocate(model.eval(), 2, 4)
        assert cache.keys[0].shape[2] == model.sequential[2].attention.kv_heads == \
            tiny_spec(**CONFIGS[name]).kv_heads // 2, "each rank caches only its kv heads"
        got_tokens, got_logits = greedy_cached(model, tokens, positions, 5,
                                               lambda x: gather_along(x, -1, groups.tp))
        assert torch.equal(got_tokens, dense_tokens), name
        torch.testing.assert_close(got_logits, dense_logits, **TOL, msg=name)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_tp2_cached_generation_equals_tp1() -> None:
    run_distributed(check_tp2_cached_generation_equals_tp1, 2, 100.0)
