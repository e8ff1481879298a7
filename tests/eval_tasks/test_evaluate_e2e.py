"""``./deepy.py evaluate.py config.yml`` for real, on a local task named by its YAML path."""

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
from tests.eval_tasks.conftest import CHOICE_DOCS
from tests.oracles import loglikelihood

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(300)]


def test_deepy_evaluate_local_task(task_dir: Path, tmp_path: Path) -> None:
    config = tiny_config("unused", tmp_path, data_path=None, load=str(tmp_path / "ckpt"),
                         save=None, eval_tasks=[str(task_dir / "tiny_choice.yaml")],
                         eval_results_prefix=str(tmp_path / "results" / "tiny"),
                         init_method_std=0.2)
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config))
    spec = ModelSpec.from_args(NeoXArgs.from_ymls([tmp_path / "c.yml"]), padded_vocab_size=512)
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=5)
    save_as_checkpoint(model.eval().state_dict(), spec, tmp_path / "ckpt", iteration=1)

    proc = run_deepy(config, tmp_path / "run", script="evaluate.py", timeout=280)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    [path] = list((tmp_path / "results").glob("tiny_eval_results_*.json"))
    acc = json.loads(path.read_text())["results"]["tiny_choice"]["acc,none"]
    tok = build_tokenizer("CharLevelTokenizer")
    right = 0
    for doc in CHOICE_DOCS:
        scores = [loglikelihood(model, tok, doc["question"], c) for c in doc["choices"]]
        right += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    assert acc == pytest.approx(right / len(CHOICE_DOCS))
