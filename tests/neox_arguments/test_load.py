"""Loading YAML/JSON the way GPT-NeoX writes it, with origins and duplicate detection."""

from __future__ import annotations

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.neox_arguments.load import load_files, parse_text

from .conftest import ONE_CPU, minimal_yaml

NEOX_STYLE = """# GPT-NeoX style: a flow mapping with comments, True and trailing commas
{
  "pipe-parallel-size": 1,   # dashes are fine
  "use_wandb": True,
  "optimizer": {
    "type": "Adam",
    "params": {"lr": 6e-4, "betas": [0.9, 0.95], "eps": 1e-8,},
  },
  "zero_optimization": {"reduce_bucket_size": 5e8,},
  "min_lr": 6.0e-5,
}
"""


def test_neox_style_yaml_reads_numbers_everywhere():
    data, lines, problems = parse_text(NEOX_STYLE, "a.yml")
    assert problems == []
    assert data["optimizer"]["params"]["lr"] == pytest.approx(0.0006)
    assert data["optimizer"]["params"]["eps"] == pytest.approx(1e-8)
    assert data["zero_optimization"]["reduce_bucket_size"] == 500_000_000
    assert isinstance(data["zero_optimization"]["reduce_bucket_size"], int)
    assert data["use_wandb"] is True
    assert data["min_lr"] == pytest.approx(6e-5)
    assert lines["pipe_parallel_size"] == 3
    assert lines["min_lr"] == 10


@pytest.mark.parametrize("text,value", [("x: 1e-5", 1e-5), ("x: -2E+3", -2000),
                                        ("x: 5e8", 500_000_000), ("x: 3.5e-1", 0.35),
                                        ("x: '1e-5'", "1e-5"), ("x: 12", 12)])
def test_exponent_numbers(text, value):
    assert parse_text(text, "a.yml")[0]["x"] == value


def test_strict_json_file(write):
    path = write("c.json", '{"num_layers": 2, "lr": 1e-5}')
    raw = load_files([path])
    assert raw.values == {"num_layers": 2, "lr": 1e-5}
    bad = write("d.json", '{"num_layers": 2,}')
    assert "cannot be parsed" in str(load_files([bad]).problems[0])


def test_duplicate_key_within_a_file_names_file_and_line(write):
    path = write("dup.yml", minimal_yaml() + "hidden-size: 128\n")
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_ymls([path], resources=ONE_CPU)
    (problem,) = err.value.problems
    assert problem.key == "hidden_size"
    assert problem.origin.file.endswith("dup.yml") and problem.origin.line == 7
    assert "twice" in str(err.value)


def test_duplicate_nested_key_is_an_error(write):
    path = write("n.yml", minimal_yaml() + "optimizer: {params: {lr: 1, lr: 2}}\n")
    with pytest.raises(ConfigError, match="n.yml.*lr.*twice"):
        NeoXArgs.from_ymls([path], resources=ONE_CPU)


def test_key_in_two_files_names_both(write):
    a = write("a.yml", minimal_yaml())
    b = write("b.yml", "seq-length: 128\n")
    with pytest.raises(ConfigError) as err:
        NeoXArgs.from_ymls([a, b], resources=ONE_CPU)
    text = str(err.value)
    assert "seq_length" in text and "a.yml:4" in text and "b.yml:1" in text


def test_stacked_files_merge_and_keep_origins_and_texts(write):
    a = write("model.yml", minimal_yaml())
    b = write("paths.yml", "# paths\nsave: out\n")
    args = NeoXArgs.from_ymls([a, b], resources=ONE_CPU)
    assert args.save == "out" and args.hidden_size == 64
    assert str(args.origins["save"]).endswith("paths.yml:2")
    assert args.config_files == {"model.yml": minimal_yaml(), "paths.yml": "# paths\nsave: out\n"}


def test_overwrite_values_win_without_clash(write):
    a = write("a.yml", minimal_yaml())
    args = NeoXArgs.from_ymls([a], overwrite_values={"hidden-size": 128}, resources=ONE_CPU)
    assert args.hidden_size == 128


def test_unreadable_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="nope.yml.*cannot be read"):
        NeoXArgs.from_ymls([str(tmp_path / "nope.yml")], resources=ONE_CPU)


def test_config_files_with_equal_names_are_both_kept(write):
    a = write("a/m.yml", minimal_yaml())
    b = write("b/m.yml", "save: out\n")
    args = NeoXArgs.from_ymls([a, b], resources=ONE_CPU)
    assert args.config_files == {"m.yml": minimal_yaml(), b: "save: out\n"}
