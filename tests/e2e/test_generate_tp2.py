"""``./deepy.py generate.py -i ... -o ...`` with 2 tensor-parallel workers matches 1 worker.

The checkpoint is written at TP=1; the TP=2 workers cut their slices from it at load time.
The 1-worker reference runs generate.py's own path (loader and text_gen_type mode) in this
process, which saves a second launch; an independent argmax loop checks both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from megatron.inference import build_inference_model, run_text_generation
from megatron.model import ModelSpec, build_model
from megatron.model.checkpoint_io import save_as_checkpoint
from megatron.neox_arguments import NeoXArgs
from megatron.parallel import ProcessGroups
from megatron.tokenizer import build_tokenizer
from megatron.training.engine import build_spec
from tests.e2e.launch import run_deepy, tiny_config
from tests.oracles import greedy_text

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(600)]

PROMPTS = ["Hello world", "abc", "The quick brown fox"]
STEPS = 8


def generation_config(tmp_path: Path, **layout: object) -> dict:
    """Greedy input-file generation whose config names other files than the command line."""
    decoy = tmp_path / "decoy_prompts.txt"
    decoy.write_text("not these\n")
    return tiny_config("unused", tmp_path, data_path=None, load=str(tmp_path / "ckpt"),
                       save=None, text_gen_type="input-file", sample_input_file=str(decoy),
                       sample_output_file=str(tmp_path / "decoy.jsonl"), temperature=0.0,
                       maximum_tokens=STEPS, init_method_std=0.2, **layout)


def one_worker_samples(config_path: Path, prompts: Path, out: Path) -> list[dict]:
    """The single-process path of generate.py (no launcher): same loader, same modes."""
    args = NeoXArgs.from_ymls([config_path], overwrite_values={
        "sample_input_file": str(prompts), "sample_output_file": str(out)})
    tok = build_tokenizer(args.tokenizer_type)
    spec = build_spec(args, tok)
    run_text_generation(build_inference_model(args, tok, spec, ProcessGroups.single()))
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_tp2_generate_matches_tp1_from_a_tp1_checkpoint(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    config = generation_config(tmp_path)
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config))
    spec = ModelSpec.from_args(NeoXArgs.from_ymls([tmp_path / "c.yml"]), padded_vocab_size=512)
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=11)
    save_as_checkpoint(model.eval().state_dict(), spec, tmp_path / "ckpt", tp=1, pp=1,
                       iteration=5)

    out = tmp_path / "tp2_samples.jsonl"
    proc = run_deepy(generation_config(tmp_path, num_gpus=2, model_parallel_size=2),
                     tmp_path / "tp2", script="generate.py", timeout=540,
                     extra=["-i", str(prompts), "-o", str(out)])
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    tp2 = [json.loads(line) for line in out.read_text().splitlines()]
    tp1 = one_worker_samples(tmp_path / "c.yml", prompts, tmp_path / "tp1_samples.jsonl")

    assert not (tmp_path / "decoy.jsonl").exists()  # -o replaced the config's file
    assert [r["context"] for r in tp2] == PROMPTS  # -i replaced the config's file
    assert [(r["context"], r["text"]) for r in tp2] == [(r["context"], r["text"]) for r in tp1]
    tok = build_tokenizer("CharLevelTokenizer")
    expected = [greedy_text(model, tok, p, STEPS) for p in PROMPTS]
    assert [r["text"] for r in tp2] == expected
    assert any(expected)  # the comparison is not between empty strings
