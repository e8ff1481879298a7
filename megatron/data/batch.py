"""Turn a batch of ``seq_length + 1`` token samples into model inputs and loss targets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

Inputs = tuple[torch.Tensor, torch.Tensor]
Targets = tuple[torch.Tensor, torch.Tensor]


def get_batch(batch: Mapping[str, Any], eod: int, eod_mask_loss: bool) -> tuple[Inputs, Targets]:
    """Split samples into ``(tokens, position_ids), (labels, loss_mask)`` as GPT-NeoX does.

    ``tokens = text[:, :-1]`` and ``labels = text[:, 1:]`` (or the ``"label"`` entry shifted the
    same way). A negative label (-100, the padding/ignore marker) gets loss weight 0 and is
    replaced by 0 so the cross entropy never indexes it. With ``eod_mask_loss`` the positions
    whose *input* token is ``eod`` get weight 0 too (GPT-NeoX's get_ltor_masks_and_position_ids).

    Returns:
        tokens, position_ids, labels: int64 [b, s]; loss_mask: float32 [b, s].
    """
    text = torch.as_tensor(batch["text"]).long()
    source = torch.as_tensor(batch["label"]).long() if "label" in batch else text
    tokens = text[:, :-1]
    targets = source[:, 1:]
    label_mask = targets >= 0
    loss_mask = label_mask.to(torch.float32)
    if eod_mask_loss:
        loss_mask = loss_mask * (tokens != eod).to(torch.float32)
    labels = torch.where(label_mask, targets, torch.zeros_like(targets)).contiguous()
    # Padding (-100) in the inputs would index outside the embedding; its loss is masked
    # already, so any valid id will do.
    tokens = torch.where(tokens >= 0, tokens, torch.full_like(tokens, eod)).contiguous()
    b, s = tokens.shape
    position_ids = torch.arange(s, dtype=torch.long).unsqueeze(0).expand(b, s).contiguous()
    return (tokens, position_ids), (labels, loss_mask)
