"""tools/inspect_checkpoints.py: listing names, shapes, dtypes and norms; comparing layouts."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from megatron.model.checkpoint_io import save_as_checkpoint  # noqa: E402
from megatron.model.gpt import GPTModel  # noqa: E402
from megatron.model.spec import ModelSpec  # noqa: E402
from megatron.parallel.groups import Group  # noqa: E402
from tools import inspect_checkpoints  # noqa: E402

CONFIG = {"num_layers": 1, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 16,
          "max_position_embeddings": 16, "pos_emb": "rotary", "padded_vocab_size": 96,
          "no_weight_tying": True,
          "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
SPEC = ModelSpec(hidden_size=64, num_layers=1, num_attention_heads=4, padded_vocab_size=96,
                 seq_length=16, pos_emb="rotary", tie_word_embeddings=False)


def weights() -> dict[str, torch.Tensor]:
    state = GPTModel(SPEC, Group(), seed=2).state_dict()
    state["sequential.0.word_embeddings.weight"] = torch.ones(96, 64)  # norm sqrt(6144)
    return state


def write(tmp: Path, name: str, tp: int, state: dict[str, torch.Tensor],
          with_config: bool = True) -> Path:
    configs = {"model.yml": json.dumps(CONFIG)} if with_config else None
    return save_as_checkpoint(state, SPEC, tmp / name, tp=tp, config_files=configs)


def rows(out: str) -> dict[str, list[str]]:
    return {line.split("\t")[0]: line.split("\t")[1:] for line in out.strip().splitlines()}


def test_listing_merges_shards_into_full_names(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path, "a", 2, weights())
    assert inspect_checkpoints.main([str(folder)]) == 0
    table = rows(capsys.readouterr().out)
    assert len(table) == 16  # embedding, 12 in the block, 2 in the final norm, 1 head
    assert table["sequential.2.attention.query_key_value.weight"][:2] == ["(192, 64)", "float32"]
    assert table["sequential.2.mlp.linear2.weight"][0] == "(64, 256)"
    assert table["sequential.5.final_linear.weight"][0] == "(96, 64)"
    norm = float(table["sequential.0.word_embeddings.weight"][2])
    assert math.isclose(norm, math.sqrt(96 * 64), rel_tol=1e-5)
    assert float(table["sequential.4.norm.weight"][2]) == pytest.approx(8.0)  # ones(64)


def test_raw_listing_shows_each_rank_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path, "a", 2, weights(), with_config=False)
    assert inspect_checkpoints.main([str(tmp_path / "a")]) == 0  # no configs: raw, via latest
    table = rows(capsys.readouterr().out)
    assert table["mp_rank_01_model_states.pt:sequential.2.attention.query_key_value.weight"][0] \
        == "(96, 64)"
    assert table["mp_rank_00_model_states.pt:sequential.0.word_embeddings.weight"][0] == "(48, 64)"
    assert len(table) == 32 and folder.name == "global_step0"


def test_compare_across_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = weights()
    one, two = write(tmp_path, "tp1", 1, state), write(tmp_path, "tp2", 2, state)
    assert inspect_checkpoints.main([str(one), str(two)]) == 0
    table = rows(capsys.readouterr().out)
    assert len(table) == 16 and {v[0] for v in table.values()} == {"max_abs_diff"}
    assert {float(v[1]) for v in table.values()} == {0.0}
    changed = dict(state)
    changed["sequential.2.mlp.linear1.bias"] = state["sequential.2.mlp.linear1.bias"].clone()
    changed["sequential.2.mlp.linear1.bias"][7] += 0.5
    three = write(tmp_path, "changed", 2, changed)
    assert inspect_checkpoints.main([str(one), str(three)]) == 1
    table = rows(capsys.readouterr().out)
    assert float(table["sequential.2.mlp.linear1.bias"][1]) == 0.5
    assert float(table["sequential.2.mlp.linear2.bias"][1]) == 0.0
    assert inspect_checkpoints.main([str(one), str(three), "--atol", "0.6"]) == 0


def test_bad_path_is_a_usage_error(tmp_path: Path) -> None:
    assert inspect_checkpoints.main([str(tmp_path / "missing")]) == 2
