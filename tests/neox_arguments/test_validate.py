"""Every cross-key error is reported with its key and the file that set it."""

from __future__ import annotations

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs, Resources

from .conftest import EIGHT_GPUS, MINIMAL, minimal_yaml


def _errors(write, extra_yaml: str, resources: Resources = EIGHT_GPUS, **extra):
    model = write("model.yml", minimal_yaml(**extra))
    paths = [model]
    if extra_yaml:
        paths.append(write("extra.yml", extra_yaml))
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_ymls(paths, resources=resources)
    return err.value


def test_hidden_not_divisible_by_heads(write):
    err = _errors(write, "", hidden_size=66)
    (p,) = err.problems
    assert p.key == "hidden_size" and p.origin.file.endswith("model.yml")
    assert "divisible by num_attention_heads=4" in str(p)


def test_heads_not_divisible_by_tp(write):
    err = _errors(write, "model_parallel_size: 8\n")
    assert [p.key for p in err.problems] == ["num_attention_heads"]
    assert "model.yml" in str(err) and "model_parallel_size=8" in str(err)


def test_kv_heads_must_divide_heads(write):
    err = _errors(write, "num_kv_heads: 3\n")
    (p,) = err.problems
    assert p.key == "num_kv_heads" and p.origin.file.endswith("extra.yml")
    assert "divide num_attention_heads=4" in str(p)


def test_inconsistent_batch_triad(write):
    err = _errors(write, "train_batch_size: 30\ngradient_accumulation_steps: 2\n")
    (p,) = err.problems
    assert p.key == "train_batch_size" and p.origin.file.endswith("extra.yml")
    assert "train_batch_size=30" in str(p) and "data_parallel_size=8" in str(p)


def test_gpus_not_divisible_by_model_parallel(write):
    err = _errors(write, "pipe_parallel_size: 3\n")
    assert [p.key for p in err.problems] == ["global_num_gpus"]
    assert "pp=3" in str(err)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_2_3_refused_with_pipeline(write, stage):
    err = _errors(write, f"pipe_parallel_size: 1\nzero_optimization: {{stage: {stage}}}\n")
    (p,) = err.problems
    assert p.key == "zero_optimization" and p.origin.file.endswith("extra.yml")
    assert f"ZeRO stage {stage}" in str(p) and "pipe_parallel_size=1" in str(p)


def test_zero_1_with_pipeline_is_fine():
    args = NeoXArgs.from_dict({**MINIMAL, "pipe_parallel_size": 2,
                               "zero_optimization": {"stage": 1}}, resources=EIGHT_GPUS)
    assert args.zero_stage == 1 and args.is_pipe_parallel


def test_missing_required_keys_all_listed(write):
    path = write("empty.yml", "train_micro_batch_size_per_gpu: 1\n")
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_ymls([path], resources=EIGHT_GPUS)
    assert [p.key for p in err.value.problems] == [
        "num_layers", "hidden_size", "num_attention_heads", "seq_length",
        "max_position_embeddings"]
    assert "required for training" in str(err.value)


def test_missing_batch_size(write):
    path = write("m.yml", "".join(f"{k}: {v}\n" for k, v in MINIMAL.items()
                                  if k != "train_micro_batch_size_per_gpu"))
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu: is required"):
        NeoXArgs.from_ymls([path], resources=EIGHT_GPUS)


def test_attention_config_wrong_length(write):
    err = _errors(write, 'attention_config: [[["global"], 3]]\n')
    (p,) = err.problems
    assert p.key == "attention_config" and p.origin.file.endswith("extra.yml")
    assert "covers 3 layers but num_layers=2" in str(p)


def test_attention_config_unknown_type(write):
    err = _errors(write, 'attention_config: [[["globl"], 2]]\n')
    assert "unknown attention types ['globl']" in str(err)


def test_precision_disagrees_with_dict(write):
    err = _errors(write, "precision: fp32\nfp16: {enabled: true}\n")
    assert [p.key for p in err.problems] == ["precision"]


def test_error_line_format(write):
    err = _errors(write, "num_kv_heads: 3\n")
    assert str(err).startswith(write("extra.yml", "num_kv_heads: 3\n") + ":1: num_kv_heads=3: ")


@pytest.mark.parametrize("line,key,fragment", [
    ("hidden_dropout: high\n", "hidden_dropout", "expected float, got str"),
    ("checkpoint_num_layers: 2.5\n", "checkpoint_num_layers", "expected int"),
    ("use_wandb: 'yes'\n", "use_wandb", "expected bool or None"),
    ("pos_emb: rotory\n", "pos_emb", "expected one of 'learned', 'rotary'"),
    ("train_data_paths: data/x\n", "train_data_paths", "expected list[str] or None"),
])
def test_type_errors_name_key_and_file(write, line, key, fragment):
    model = write("model.yml", minimal_yaml())
    bad = write("bad.yml", "# comment\n" + line)
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_ymls([model, bad], resources=EIGHT_GPUS)
    (p,) = err.value.problems
    assert p.key == key and p.origin.file == bad and p.origin.line == 2
    assert fragment in str(p)


def test_intermediate_size_and_expansion_factor_conflict(write):
    err = _errors(write, "intermediate_size: 256\nexpansion_factor: 4\n")
    assert [p.key for p in err.problems] == ["expansion_factor"]


def test_seq_length_longer_than_positions(write):
    text = minimal_yaml().replace("max_position_embeddings: 64", "max_position_embeddings: 32")
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_ymls([write("seq.yml", text)], resources=EIGHT_GPUS)
    (p,) = err.value.problems
    assert p.key == "seq_length" and p.origin.file.endswith("seq.yml")
    assert "exceeds max_position_embeddings=32" in str(p)


@pytest.mark.parametrize("line,key", [("rotary_pct: 1.5\n", "rotary_pct"),
                                      ("warmup: -0.1\n", "warmup"),
                                      ("hidden_dropout: 2\n", "hidden_dropout")])
def test_fractions_out_of_range(write, line, key):
    err = _errors(write, line)
    (p,) = err.problems
    assert p.key == key and p.origin.file.endswith("extra.yml") and "[0.0, 1.0]" in str(p)
