"""A synthetic corpus with a learnable rule, fed straight to ``train_step``.

Each sample is an arithmetic progression ``t_i = (a + i * b) mod VOCAB`` with a random start
``a`` and stride ``b`` in {1, 2, 3}. Uniform guessing costs ln 64 = 4.16 nats; a model that
learns "next = this + stride" (the stride is visible from the previous two tokens) approaches
0, and one that learns only "next = this + 1, 2 or 3" reaches ln 3 = 1.10.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

STRIDES = (1, 2, 3)

Batch = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def sample_batch(step: int, rows: int, seq: int, vocab: int) -> torch.Tensor:
    """``[rows, seq + 1]`` progressions for global step ``step`` (the same on every rank)."""
    gen = torch.Generator().manual_seed(1000 + step)
    start = torch.randint(0, vocab, (rows, 1), generator=gen)
    stride = torch.tensor(STRIDES)[torch.randint(0, len(STRIDES), (rows, 1), generator=gen)]
    return (start + stride * torch.arange(seq + 1)) % vocab


def rank_batches(dp_rank: int, dp_size: int, micro: int, seq: int,
                 vocab: int) -> Iterator[Batch]:
    """This data-parallel rank's micro-batches ``((tokens, positions), (labels, mask))``.

    Each global batch holds ``micro * dp_size`` samples; rank ``r`` takes the ``r``-th
    contiguous block, as GPT-NeoX's sampler does, so DP=2 sees what one process would.
    """
    step = 0
    while True:
        rows = sample_batch(step, micro * dp_size, seq, vocab)
        rows = rows[dp_rank * micro:(dp_rank + 1) * micro]
        tokens, labels = rows[:, :-1], rows[:, 1:]
        positions = torch.arange(seq).expand(micro, -1)
        yield (tokens, positions), (labels, torch.ones(labels.shape, dtype=torch.float32))
        step += 1
