"""get_batch: shifting, masks and position ids, with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import torch

from megatron.data.batch import get_batch

EOD = 0


def test_shift_and_plain_mask() -> None:
    text = np.array([[5, 6, 0, 7, 8]])
    (tokens, pos), (labels, mask) = get_batch({"text": text}, eod=EOD, eod_mask_loss=False)
    assert tokens.tolist() == [[5, 6, 0, 7]]
    assert labels.tolist() == [[6, 0, 7, 8]]
    assert pos.tolist() == [[0, 1, 2, 3]]
    assert mask.dtype == torch.float32 and mask.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert tokens.dtype == labels.dtype == pos.dtype == torch.int64


def test_eod_mask_loss_masks_positions_whose_input_is_eod() -> None:
    text = torch.tensor([[5, 0, 6, 7], [0, 1, 2, 0]])
    (tokens, _), (_, mask) = get_batch({"text": text}, eod=EOD, eod_mask_loss=True)
    assert mask.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]


def test_padding_is_masked_and_made_safe() -> None:
    text = np.array([[5, 6, -100, -100]])
    (tokens, _), (labels, mask) = get_batch({"text": text}, eod=9, eod_mask_loss=False)
    assert mask.tolist() == [[1.0, 0.0, 0.0]]
    assert labels.tolist() == [[6, 0, 0]]
    assert tokens.tolist() == [[5, 6, 9]]


def test_label_entry_replaces_text_targets() -> None:
    batch = {"text": np.array([[1, 2, 3, 4]]), "label": np.array([[-100, -100, 3, 4]])}
    (tokens, _), (labels, mask) = get_batch(batch, eod=EOD, eod_mask_loss=False)
    assert tokens.tolist() == [[1, 2, 3]]
    assert labels.tolist() == [[0, 3, 4]]
    assert mask.tolist() == [[0.0, 1.0, 1.0]]
