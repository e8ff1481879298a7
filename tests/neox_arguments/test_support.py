"""Unsupported-feature gate, performance fallbacks, and missing input paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron.neox_arguments import NeoXArgs, missing_paths, performance_fallbacks
from megatron.neox_arguments import unsupported_features as unsupported

from .conftest import EIGHT_GPUS, MINIMAL


def _args(**extra) -> NeoXArgs:
    return NeoXArgs.from_dict({**MINIMAL, **extra}, resources=EIGHT_GPUS)


def test_plain_config_is_supported():
    assert unsupported(_args()) == [] and performance_fallbacks(_args()) == []


@pytest.mark.parametrize("extra,key", [
    ({"moe_num_experts": 8}, "moe_num_experts"),
    ({"attention_config": [[["global", "sparse_fixed"], 1]]}, "attention_config"),
    ({"attention_config": [[["mamba"], 2]]}, "attention_config"),
    ({"coord_check": True}, "coord_check"),
    ({"train_impl": "dpo"}, "train_impl"),
    ({"curriculum_learning": {"enabled": True}}, "curriculum_learning"),
    ({"s3_path": "s3://bucket/run"}, "s3_path"),
    ({"autotuning": {"enabled": True}}, "autotuning"),
    ({"te_mha": True}, "te_mha"),
    ({"use_comet": True}, "use_comet"),
])
def test_unsupported(extra, key):
    (message,) = unsupported(_args(**extra))
    assert message.startswith(f"not supported yet: {key}=")


@pytest.mark.parametrize("extra", [
    {"moe_num_experts": 1}, {"attention_config": [[["global", "local"], 1]]},
    {"attention_config": [[["flash"], 2]]}, {"curriculum_learning": {"enabled": False}},
])
def test_supported_values_pass(extra):
    assert unsupported(_args(**extra)) == []


def test_performance_fallbacks_are_warnings():
    args = _args(bias_gelu_fusion=True, scaled_upper_triang_masked_softmax_fusion=True)
    warnings = performance_fallbacks(args)
    assert len(warnings) == 2 and all("falls back to plain PyTorch" in w for w in warnings)
    assert unsupported(args) == []


def test_missing_paths(tmp_path: Path):
    (tmp_path / "d.bin").write_bytes(b"")
    (tmp_path / "vocab.json").write_text("{}")
    args = _args(data_path=str(tmp_path / "d"), vocab_file=str(tmp_path / "vocab.json"),
                 merge_file=str(tmp_path / "merges.txt"),
                 train_data_paths=[str(tmp_path / "t")], load=str(tmp_path / "ckpt"))
    assert missing_paths(args) == [str(tmp_path / "d.idx"), str(tmp_path / "t.bin"),
                                   str(tmp_path / "t.idx"), str(tmp_path / "merges.txt")]


def test_requested_iteration_must_exist(tmp_path: Path):
    (tmp_path / "global_step10").mkdir()
    assert missing_paths(_args(load=str(tmp_path), iteration=10)) == []
    assert missing_paths(_args(load=str(tmp_path), iteration=20)) == [
        str(tmp_path / "global_step20")]


@pytest.mark.parametrize("extra,key", [
    ({"num_unique_layers": 1}, "num_unique_layers"),
    ({"opt_pos_emb_offset": 2}, "opt_pos_emb_offset"),
    ({"lr_decay_style": "infinite_cosine"}, "lr_decay_style"),
    ({"dataset_impl": "pairwise"}, "dataset_impl"),
    ({"soft_prompt_tuning": {"enabled": True, "num_tokens": 10}}, "soft_prompt_tuning"),
    ({"load_universal": True}, "load_universal"),
])
def test_unsupported_more(extra, key):
    (message,) = unsupported(_args(**extra))
    assert message.startswith(f"not supported yet: {key}=")


def test_weight_sharing_with_every_layer_unique_is_fine():
    assert unsupported(_args(num_unique_layers=2)) == []  # MINIMAL has 2 layers
