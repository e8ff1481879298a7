"""``KVCache``: per-layer keys and values for incremental decoding.

Without a cache every generated token reruns the whole sequence. With one, each forward pass
runs only the *new* positions (the prompt on the first call, then one token per call) and
attends to the keys and values earlier calls stored::

    cache = KVCache.allocate(model, batch_size=b, max_length=prompt_len + max_new_tokens)
    logits = model((prompt, position_ids), cache=cache)          # [b, s, V/tp]
    for _ in range(max_new_tokens):
        token = logits[:, -1].argmax(-1, keepdim=True)          # (gather over TP first)
        logits = model((token, cache.next_position_ids()), cache=cache)   # [b, 1, V/tp]

``model`` is a plain ``GPTModel`` (``build_model(..., pipe_parallel_size=0)``), in eval mode
for deterministic results. The cache holds, for each block, keys (after rotary) and values of
this tensor-parallel rank's ``num_kv_heads / tp`` heads, never expanded to the query heads:
``[b, max_length, kv_heads/tp, head_dim]``. Slot ``i`` of every row is filled by the same
call, so all rows share one ``length``.

Positions and padding (left padding was chosen over per-row lengths): position ids are
honoured for every encoding (learned and sinusoidal tables, rotary angles). A *negative*
position id marks a padding slot: no query ever attends to it (its key gets a score bias of
``PAD_BIAS``). Left-pad a batch of prompts of different lengths (``left_padded_batch``) so
every row's real tokens are contiguous and end at the same slot; each row then numbers its
own tokens from 0, and distances between slots equal distances between positions, so
ALiBi, T5-RPE and sliding windows (which work on slot distances) see exactly what the prompt
alone would. Batched cached generation then equals generating each prompt alone.
Right-padded lock-step buffers (GPT-NeoX's generation loop) need no padding at all: feed
``tokens[:, cache.length:t]`` with positions ``cache.length .. t-1``.

Sequence parallelism and the DeepSpeed pipeline module are not supported (build the
inference model with ``pipe_parallel_size=0`` and ``sequence_parallel=False``; the weights
are the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from megatron.model.positional import Positional, rotate_half
from megatron.model.registry import Registry

PAD_BIAS = -1.0e4
"""Score bias of padding keys: ``exp(-1e4)`` is exactly 0 in fp32, yet ``-1e4`` plus a
causal ``finfo.min`` stays finite in fp16, so a padding query row never becomes all -inf
(which would turn into NaN and leak into real rows through ``0 * NaN``)."""


class KVCacheError(ValueError):
    """The cache cannot take this call (full, wrong batch size, unsupported model)."""


RotateAt = Callable[[Positional, torch.Tensor, torch.Tensor, "StepState"],
                    tuple[torch.Tensor, torch.Tensor]]
EmbedAt = Callable[[Positional, torch.Tensor, "StepState"], torch.Tensor]
ROTATE_AT: Registry[RotateAt] = Registry("cached rotation")
"""Per ``pos_emb``: rotate q and k ``[b, s, heads, d]`` at the step's position ids."""
EMBED_AT: Registry[EmbedAt] = Registry("cached input position encoding")
"""Per input-stage ``pos_emb``: add position information to ``[b, s, h]`` at position ids."""


class StepState:
    """What one cached forward pass shares across layers: its positions and memoised tables.

    Attributes:
        positions: position ids of the new tokens ``[b, s]``, padding clamped to 0.
        start: first slot the new tokens fill.
        tables: per-cache memo of position tables (rotary cos/sin, sinusoidal rows), built
            once for ``max_length`` positions.
        max_length: slots in the cache (every position id is below it).
    """

    def __init__(self, positions: torch.Tensor, start: int, tables: dict[Any, Any],
                 max_length: int) -> None:
        self.positions, self.start = positions, start
        self.tables, self.max_length = tables, max_length
        self.pad_bias: torch.Tensor | None = None


def _rotation_free(positional: Positional, q: torch.Tensor, k: torch.Tensor,
                   step: StepState) -> tuple[torch.Tensor, torch.Tensor]:
    """Encodings whose ``rotate`` hook is the identity at every position."""
    return positional.rotate(q, k)


for _name in ("none", "learned", "sinusoidal", "alibi", "rpe"):
    ROTATE_AT.register(_name)(_rotation_free)


@ROTATE_AT.register("rotary")
def _rotary_at(positional: Positional, q: torch.Tensor, k: torch.Tensor,
               step: StepState) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary at explicit positions: rows of the model's own fp32 cos/sin tables."""
    key = ("rotary", q.dtype, q.device)
    if key not in step.tables:
        step.tables[key] = positional.cos_sin(step.max_length, q.dtype, q.device)
    cos, sin = (t[0, :, 0][step.positions][:, :, None] for t in step.tables[key])  # [b,s,1,r]
    dims = cos.shape[-1]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., :dims], x[..., dims:]
        return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)

    return rotate(q), rotate(k)


@EMBED_AT.register("learned")
def _learned_at(positional: Positional, x: torch.Tensor, step: StepState) -> torch.Tensor:
    return positional.embed(x, step.positions)


@EMBED_AT.register("sinusoidal")
def _sinusoidal_at(positional: Positional, x: torch.Tensor, step: StepState) -> torch.Tensor:
    """The sinusoidal hook numbers positions ``0..s-1`` by shape, so tabulate ``max_length``
    rows once (the encoding is additive and has no parameters) and pick rows by position."""
    key = ("sinusoidal", x.dtype, x.device)
    if key not in step.tables:
        probe = x.new_zeros(1, step.max_length, x.shape[-1])
        every = torch.arange(step.max_length, device=x.device)[None]
        step.tables[key] = positional.embed(probe, every)[0]  # [max_length, h]
    return x + step.tables[key][step.positions]


class LayerCache:
    """One block's view of the cache; ``SelfAttention.forward(x, cache=...)`` calls it."""

    def __init__(self, owner: KVCache, index: int) -> None:
        self.owner, self.index = owner, index

    def rotate(self, positional: Positional, q: torch.Tensor,
               k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``positional``'s rotation to the new q and k at their position ids."""
        return self.owner.rotate_at(positional, q, k, self.owner.step)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new ``k, v [b, s, kv_heads, d]`` and return every cached position's
        ``[b, start + s, kv_heads, d]`` (the new ones last)."""
        step = self.owner.step
        end = step.start + k.shape[1]
        keys, values = self.owner.keys[self.index], self.owner.values[self.index]
        keys[:, step.start : end] = k
        values[:, step.start : end] = v
        return keys[:, :end], values[:, :end]

    def score_bias(self, bias: torch.Tensor | None) -> torch.Tensor | None:
        """Add the padding bias ``[b, 1, 1, sk]`` to the positional one (when padded)."""
        pad = self.owner.step.pad_bias
        if pad is None:
            return bias
        return pad if bias is None else bias + pad


class KVCache:
    """Keys and values of every block for ``batch_size`` rows of up to ``max_length`` slots.

    Attributes:
        keys, values: one tensor per block, ``[b, max_length, kv_heads/tp, head_dim]``.
        positions: ``[b, max_length]`` position id of each filled slot; -1 marks padding and
            slots not filled yet.
        length: slots filled so far (the same for every row).
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor],
                 rotate_at: RotateAt, embed_at: EmbedAt | None) -> None:
        self.keys, self.values = keys, values
        self.rotate_at, self.embed_at = rotate_at, embed_at
        b, self.max_length = keys[0].shape[:2]
        self.positions = torch.full((b, self.max_length), -1, dtype=torch.long,
                                    device=keys[0].device)
        self.length = 0
        self.step = StepState(self.positions[:, :0], 0, {}, self.max_length)
        self._tables: dict[Any, Any] = {}

    @classmethod
    def allocate(cls, model: Any, batch_size: int, max_length: int, *,
                 dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> KVCache:
        """An empty cache shaped for ``model``'s blocks on this tensor-parallel rank.

        Args:
            model: a ``GPTModel`` (reads ``model.spec`` and each block's attention).
            batch_size: rows generated together.
            max_length: slots per row: prompt (with its left padding) plus new tokens.
            dtype: storage type; defaults to the model's parameter dtype.
            device: defaults to the model's device.

        Raises:
            KVCacheError: for a pipelined or sequence-parallel model, or sizes below 1.
        """
        spec = getattr(model, "spec", None)
        if spec is None or not hasattr(model, "blocks"):
            raise KVCacheError(f"KVCache needs a plain GPTModel (pipe_parallel_size=0); got "
                               f"{type(model).__name__}")
        if spec.sequence_parallel:
            raise KVCacheError("KVCache does not support sequence_parallel: build the "
                               "inference model with sequence_parallel=False")
        if batch_size < 1 or max_length < 1:
            raise KVCacheError(f"batch_size = {batch_size} and max_length = {max_length} "
                               "must both be at least 1")
        param = next(model.parameters())
        dtype, device = dtype or param.dtype, device or param.device
        keys, values = [], []
        for index in model.blocks:
            attn = model.sequential[index].attention
            shape = (batch_size, max_length, attn.kv_heads, attn.head_dim)
            keys.append(torch.zeros(shape, dtype=dtype, device=device))
            values.append(torch.zeros(shape, dtype=dtype, device=device))
        embed_at = EMBED_AT.get(spec.pos_emb) if spec.pos_emb in EMBED_AT else None
        return cls(keys, values, ROTATE_AT.get(spec.pos_emb), embed_at)

    @property
    def batch_size(self) -> int:
        """Rows in the cache."""
        return self.positions.shape[0]

    def layer(self, index: int) -> LayerCache:
        """The view block ``index`` (0-based) reads and writes."""
        return LayerCache(self, index)

    def next_position_ids(self) -> torch.Tensor:
        """``[b, 1]`` position ids of the token after each row's last filled slot."""
        if self.length == 0:
            raise KVCacheError("the cache is empty: run the prompt through the model first")
        return self.positions[:, self.length - 1 : self.length] + 1

    def reset(self) -> None:
        """Forget every cached position (start a new batch with the same buffers)."""
        self.rewind(0)

    def rewind(self, length: int) -> None:
        """Drop the slots from ``length`` on, e.g. to re-run a step or resample."""
        if not 0 <= length <= self.length:
            raise KVCacheError(f"cannot rewind to length {length}; the cache holds "
                               f"{self.length} slots")
        self.positions[:, length:] = -1
        self.length = length

    def begin(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> None:
        """Record the positions of a forward pass over new ``tokens [b, s]`` (the model
        calls this; then each block's ``LayerCache`` fills slots ``length .. length+s-1``).

        Raises:
            KVCacheError: for a batch-size or shape mismatch, a full cache, or a position id
                at or beyond ``max_length``.
        """
        b, s = tokens.shape
        if b != self.batch_size or position_ids.shape != tokens.shape or s == 0:
            raise KVCacheError(f"tokens {tuple(tokens.shape)} and position_ids "
                               f"{tuple(position_ids.shape)} must both be [{self.batch_size}, "
                               "s] with s >= 1 for this cache")
        end = self.length + s
        if end > self.max_length:
            raise KVCacheError(f"the cache holds {self.length} of {self.max_length} slots; "
                               f"{s} more do not fit (allocate a larger max_length)")
        lo, hi = (int(v) for v in position_ids.aminmax())
        if hi >= self.max_length:
            raise KVCacheError(f"position id {hi} is not below max_length = "
                               f"{self.max_length}; with left padding positions never exceed "
                               "the slot index")
        self.positions[:, self.length : end] = position_ids
        self.step = StepState(position_ids.clamp(min=0), self.length, self._tables,
                              self.max_length)
        padding = self.positions[:, :end] < 0  # [b, sk]
        if lo < 0 or bool(padding[:, : self.length].any()):
            bias = torch.zeros(b, 1, 1, end, device=padding.device)
            self.step.pad_bias = bias.masked_fill(padding[:, None, None, :], PAD_BIAS)

    def embed(self, positional: Positional, x: torch.Tensor) -> torch.Tensor:
        """Add an input-stage position encoding to ``x [b, s, h]`` at this step's positions."""
        if self.embed_at is None:
            raise KVCacheError(f"{type(positional).__name__} has no cached form in EMBED_AT; "
                               "register one in megatron/model/kv_cache.py")
        return self.embed_at(positional, x, self.step)

    def advance(self) -> None:
        """Mark this step's slots filled (the model calls this after its last block)."""
        self.length = self.step.start + self.step.positions.shape[1]


def left_padded_batch(prompts: Sequence[Sequence[int]], pad_id: int,
                      device: torch.device | str | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, position_ids)``, both ``[b, longest]``, for prompts of different lengths.

    Each prompt is right-aligned; its tokens get positions ``0 .. len-1`` and the padding
    slots on the left get ``pad_id`` and position -1, which the cache hides from attention.

    Raises:
        KVCacheError: when there are no prompts or one of them is empty.
    """
    if not prompts or min(len(p) for p in prompts) == 0:
        raise KVCacheError("left_padded_batch needs at least one prompt and no empty prompt")
    longest = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    positions = torch.full((len(prompts), longest), -1, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        positions[row, longest - len(prompt) :] = torch.arange(len(prompt))
    return tokens.to(device), positions.to(device)
