"""``./deepy.py generate.py config.yml`` for real: a worker loads a TP=2 pipelined checkpoint.

(TP=2 generation itself is compared with TP=1 in test_inference_distributed.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from megatron.model import ModelSpec, build_model
from megatron.model.checkpoint_io import save_as_checkpoint
from megatron.neox_arguments import NeoXArgs
from megatron.parallel import ProcessGroups
from megatron.tokenizer import build_tokenizer
from tests.e2e.launch import run_deepy, tiny_config
from tests.oracles import greedy_text

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(300)]

PROMPTS = ["Hello world", "abc", "The quick brown fox jumps"]


def test_deepy_generate_from_tp2_pipelined_checkpoint(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "samples.jsonl"
    config = tiny_config("unused", tmp_path, data_path=None, num_gpus=1, model_parallel_size=1,
                         load=str(tmp_path / "ckpt"), save=None, text_gen_type="input-file",
                         sample_input_file=str(prompts), sample_output_file=str(out),
                         maximum_tokens=8, init_method_std=0.2)
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config))
    args = NeoXArgs.from_ymls([tmp_path / "c.yml"])
    spec = ModelSpec.from_args(args, padded_vocab_size=512)
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=5)
    save_as_checkpoint(model.eval().state_dict(), spec, tmp_path / "ckpt", tp=2, pp=1,
                       iteration=3)

    proc = run_deepy(config, tmp_path / "run", script="generate.py", timeout=240)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    tok = build_tokenizer("CharLevelTokenizer")
    assert [r["context"] for r in records] == PROMPTS
    for r in records:
        assert r["text"] == greedy_text(model, tok, r["context"], 8)
