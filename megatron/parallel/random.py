"""Random-number streams for tensor parallelism, held by an object rather than module globals.

Dropout must agree across tensor-parallel ranks where activations are replicated (otherwise
the replicas drift apart) and must differ where each rank holds a different shard (otherwise
all shards share one mask pattern). Like Megatron we keep two streams:

- the *default* stream is the device's global generator, seeded with ``seed`` on every rank;
- the *model-parallel* stream is seeded with ``seed + 2718 + tp_rank`` and used by wrapping
  the sharded region in ``with tracker.fork():``.

``get_states``/``set_states`` capture everything needed to resume bit-exactly, and
``tracker.checkpoint`` is an activation-checkpoint function that replays forked streams
during recomputation (usable as DeepSpeed's ``activation_checkpoint_func``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.checkpoint

from megatron.parallel.errors import LayoutError

MODEL_PARALLEL_RNG = "model-parallel-rng"
"""Name of the stream that differs across tensor-parallel ranks."""

MODEL_PARALLEL_SEED_OFFSET = 2718
"""Offset between the default seed and the model-parallel seed (Megatron's value)."""

DEFAULT = "default"
"""Key of the device's global generator in ``get_states``; not usable as a stream name."""


def _cuda_get() -> torch.Tensor:
    return torch.cuda.get_rng_state()


def _cuda_set(state: torch.Tensor) -> None:
    torch.cuda.set_rng_state(state)


_GLOBAL_RNG: dict[str, tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]] = {
    "cpu": (torch.get_rng_state, torch.set_rng_state),
    "cuda": (_cuda_get, _cuda_set),
}


class RNGTracker:
    """Named generator states that can temporarily replace the device's global generator."""

    def __init__(self, device_type: str = "cpu") -> None:
        if device_type not in _GLOBAL_RNG:
            raise LayoutError(f"RNGTracker device_type must be one of {sorted(_GLOBAL_RNG)}, "
                              f"got {device_type!r}")
        self.device_type = device_type
        self._get, self._set = _GLOBAL_RNG[device_type]
        self._states: dict[str, torch.Tensor] = {}

    @classmethod
    def from_seed(cls, seed: int, tp_rank: int, device_type: str = "cpu",
                  seed_default: bool = True) -> RNGTracker:
        """Megatron-style streams: default ``seed``, model-parallel ``seed + 2718 + tp_rank``.

        Args:
            seed: the run's seed (GPT-NeoX ``seed``).
            tp_rank: this process's tensor-parallel rank.
            device_type: "cpu" or "cuda": whose global generator the streams stand in for.
            seed_default: also seed torch's global generators with ``seed`` (what a fresh run
                wants; skip when resuming and restoring states instead).
        """
        if seed_default:
            torch.manual_seed(seed)
        tracker = cls(device_type)
        tracker.add(MODEL_PARALLEL_RNG, seed + MODEL_PARALLEL_SEED_OFFSET + tp_rank)
        return tracker

    @property
    def names(self) -> list[str]:
        """Names of the tracked streams."""
        return list(self._states)

    def add(self, name: str, seed: int) -> None:
        """Start a new stream ``name`` seeded with ``seed``."""
        if name == DEFAULT or name in self._states:
            raise LayoutError(f"RNG stream {name!r} already exists (or is reserved)")
        self._states[name] = torch.Generator(self.device_type).manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG) -> Iterator[None]:
        """Draw from stream ``name`` inside the block; the default stream is left untouched."""
        if name not in self._states:
            raise LayoutError(f"unknown RNG stream {name!r}; known: {self.names}")
        saved = self._get()
        self._set(self._states[name])
        try:
            yield
        finally:
            self._states[name] = self._get()
            self._set(saved)

    def get_states(self, include_default: bool = True) -> dict[str, torch.Tensor]:
        """Copies of every stream's state, plus the global generator's under ``"default"``."""
        states = {name: s.clone() for name, s in self._states.items()}
        if include_default:
            states[DEFAULT] = self._get().clone()
        return states

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        """Restore states from ``get_states`` (streams not named are left as they are)."""
        for name, state in states.items():
            if name == DEFAULT:
                self._set(state)
            else:
                self._states[name] = state.clone()

    def checkpoint(self, function: Callable[..., Any], *args: Any) -> Any:
        """Activation checkpointing that reproduces forked dropout masks on recomputation.

        ``torch.utils.checkpoint`` restores the global generator before recomputing, but not
        our streams; this wrapper rewinds them to their pre-forward state for the replay and
        puts them back afterwards, so the recomputed masks equal the original ones.
        """
        before = self.get_states(include_default=False)
        calls = 0

        def run(*inner: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return function(*inner)
            after = self.get_states(include_default=False)
            self.set_states(before)
            try:
                return function(*inner)
            finally:
                self.set_states(after)

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)
