"""generate.py's modes and output file, on a tiny model with a real NeoXArgs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from megatron.inference.cli import split_extras, with_extras
from megatron.inference.errors import InferenceError
from megatron.inference.modes import read_prompts, run_text_generation
from megatron.inference.setup import InferenceModel
from megatron.neox_arguments import NeoXArgs
from megatron.parallel import ProcessGroups
from tests.inference.conftest import TinyCharTokenizer, tiny_model, tiny_spec

TINY_YML = Path(__file__).parents[1] / "fixtures" / "tiny.yml"
TOK = TinyCharTokenizer()


def greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Independent argmax loop that stops at end-of-document (id 0)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model((torch.tensor([ids]), torch.arange(len(ids))[None]))[0, -1]
            nxt = int(logits[: TOK.vocab_size].argmax())
            if nxt == TOK.eod:
                break
            ids.append(nxt)
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.set_num_threads(1)
    return tiny_model()


def session(model: torch.nn.Module, **values: object) -> InferenceModel:
    args = NeoXArgs.from_ymls([TINY_YML], overwrite_values={"maximum_tokens": 5, **values})
    return InferenceModel(args, ProcessGroups.single(), TOK, tiny_spec(), model)


def test_input_file_writes_one_json_object_per_prompt(model: torch.nn.Module,
                                                      tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abc|hello there| |x y\n")
    out = tmp_path / "out" / "samples.jsonl"
    im = session(model, text_gen_type="input-file", sample_input_file=str(prompts),
                 sample_output_file=str(out), prompt_end="|", num_samples=2)
    run_text_generation(im)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    contexts = ["abc", "abc", "hello there", "hello there", "x y", "x y"]
    assert [r["context"] for r in records] == contexts
    for r in records:
        assert set(r) == {"context", "text", "length", "finished", "message",
                          "duration_seconds"}
        ids = greedy(model, TOK.tokenize(r["context"]), 5)
        assert r["text"] == TOK.detokenize(ids) and r["length"] == len(ids)
        assert r["finished"] == (len(ids) < 5) and r["duration_seconds"] > 0


def test_unconditional_makes_num_samples_from_end_of_document(model: torch.nn.Module,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "u.jsonl"
    im = session(model, text_gen_type="unconditional", num_samples=3,
                 sample_output_file=str(out), temperature=1.0)
    results = run_text_generation(im)
    assert len(results) == 3 and all(r.context == "" for r in results)
    assert len(out.read_text().splitlines()) == 3


def test_interactive_reads_prompts_until_stop(model: torch.nn.Module, tmp_path: Path) -> None:
    stdout = io.StringIO()
    im = session(model, text_gen_type="interactive", sample_output_file=str(tmp_path / "i"))
    results = run_text_generation(im, io.StringIO("abc\nhi\nstop\nnever\n"), stdout)
    assert [r.context for r in results] == ["abc", "hi"]
    expected = "abc" + TOK.detokenize(greedy(model, TOK.tokenize("abc"), 5))
    assert expected in stdout.getvalue() and "stop to exit" in stdout.getvalue()


def test_input_file_mode_without_a_file_is_an_error(model: torch.nn.Module) -> None:
    with pytest.raises(InferenceError, match="sample_input_file"):
        run_text_generation(session(model, text_gen_type="input-file"))


def test_unset_text_gen_type_is_an_error(model: torch.nn.Module) -> None:
    with pytest.raises(InferenceError, match="text_gen_type"):
        run_text_generation(session(model))


def test_read_prompts_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="absent.txt"):
        read_prompts(str(tmp_path / "absent.txt"), "\n")


def test_command_line_files_override_the_config() -> None:
    args = NeoXArgs.from_ymls([TINY_YML])
    extras, rest = split_extras(["--megatron_config", "X", "-i", "in.txt", "-o", "o.jsonl"])
    assert rest == ["--megatron_config", "X"]
    changed = with_extras(args, extras)
    assert (changed.sample_input_file, changed.sample_output_file) == ("in.txt", "o.jsonl")
    assert changed.text_gen_type == "input-file"
    assert with_extras(args, split_extras([])[0]) is args


def test_text_generation_config_stacks_on_a_model_config() -> None:
    config = Path(__file__).parents[2] / "configs" / "text_generation.yml"
    args = NeoXArgs.from_ymls([TINY_YML, config])
    assert (args.text_gen_type, args.maximum_tokens, args.temperature) == ("unconditional",
                                                                           102, 1.0)
    assert (args.top_k, args.top_p, args.recompute, args.num_samples) == (0, 0.0, False, 10)
