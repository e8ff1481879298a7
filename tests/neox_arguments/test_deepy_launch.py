"""deepy.py's command line: -d folder prefix, optional .yml, and GPT-NeoX's overrides."""

from __future__ import annotations

from pathlib import Path

from megatron.neox_arguments import NeoXArgs


def test_overrides_are_parsed_after_the_configs(tmp_path: Path) -> None:
    for name in ("a.yml", "b.yml"):
        (tmp_path / name).write_text("{}\n")
    script, paths, overrides = NeoXArgs.consume_deepy_launch(
        ["generate.py", "-d", str(tmp_path), "a", "b.yml", "-i", "in.txt", "-o", "out.jsonl",
         "--eval_tasks", "lambada", "piqa"]
    )
    assert script == "generate.py"
    assert paths == [str(tmp_path / "a.yml"), str(tmp_path / "b.yml")]
    assert overrides == {
        "sample_input_file": "in.txt",
        "sample_output_file": "out.jsonl",
        "eval_tasks": ["lambada", "piqa"],
    }


def test_no_overrides_gives_an_empty_dict(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("{}\n")
    _, _, overrides = NeoXArgs.consume_deepy_launch(["train.py", str(tmp_path / "a.yml")])
    assert overrides == {}
