"""Generation loads weights from checkpoints written in other parallel layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron.inference.errors import InferenceError
from megatron.inference.setup import load_weights
from megatron.model.checkpoint_io import save_as_checkpoint
from megatron.parallel import ProcessGroups
from tests.inference.conftest import tiny_model, tiny_spec


@pytest.mark.parametrize(("tp", "pp"), [(1, 0), (2, 0), (2, 2)])
def test_weights_from_any_layout_reproduce_the_saved_model(tmp_path: Path, tp: int,
                                                           pp: int) -> None:
    spec = tiny_spec()
    saved = tiny_model(spec, seed=7)
    save_as_checkpoint(saved.state_dict(), spec, tmp_path, tp=tp, pp=pp, iteration=5)
    fresh = tiny_model(spec, seed=99)
    load_weights(fresh, str(tmp_path), spec, ProcessGroups.single().tp)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_empty_load_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="no complete checkpoint"):
        load_weights(tiny_model(), str(tmp_path), tiny_spec(), ProcessGroups.single().tp)
