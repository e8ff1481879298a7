"""TrainState: the runtime counters of a run, kept apart from the frozen config.

The config says what to do; TrainState says how far we got. Checkpoints save it so a
resumed run continues from the same iteration, data position and skip count.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class TrainState:
    """Counters that change every step and must survive a restart."""

    iteration: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        known = {k: int(d[k]) for k in ("iteration", "consumed_samples", "skipped_steps") if k in d}
        return cls(**known)


def rng_state() -> dict[str, Any]:
    """All host RNG states that affect training, for exact resume."""
    return {
        "random": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _numpy_state_to_plain(state: tuple) -> tuple:
    """numpy's state holds an ndarray; plain lists load without unpickling numpy types."""
    name, keys, pos, has_gauss, gauss = state
    return (name, keys.tolist(), int(pos), int(has_gauss), float(gauss))


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["random"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch the same way on every rank."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
