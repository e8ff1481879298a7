"""``eval_tasks`` in a training config: lm-eval scores the live model at each evaluation."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from megatron.inference.decoder import RecomputeDecoder
from megatron.model import ModelSpec, build_model
from megatron.model.checkpoint_io import load_full_state_dict, save_as_checkpoint
from megatron.neox_arguments import NeoXArgs
from megatron.parallel import ProcessGroups
from megatron.parallel.groups import Group
from megatron.tokenizer import build_tokenizer
from megatron.training.eval_harness import (
    PIPE_UNSUPPORTED,
    TaskEvaluator,
    live_decoder,
    results_file,
    task_metrics,
)
from tests.e2e.launch import read_metrics, run_deepy, tiny_config
from tests.oracles import loglikelihood

DOCS = [
    {"question": "The", "choices": ["cat", "qzx"], "answer": 0},
    {"question": "hello wor", "choices": ["ld", "mm"], "answer": 0},
    {"question": "<page>", "choices": ["title", "zz"], "answer": 1},
    {"question": "abc", "choices": ["d", "xyz", "q"], "answer": 2},
]
"""lm-eval scores each choice as the continuation ``" " + choice`` (its target_delimiter)."""

def write_task(folder: Path) -> Path:
    """A local multiple-choice task (nothing fetched); returns its YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "train_choice.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    path = folder / "train_choice.yaml"
    path.write_text(
        f"task: train_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    return path


def accuracy_of_checkpoint(ckpt: Path, config: Path) -> float:
    """The task's accuracy, computed here from the saved weights without lm-eval."""
    tok = build_tokenizer("CharLevelTokenizer")
    spec = ModelSpec.from_args(NeoXArgs.from_ymls([config]), padded_vocab_size=512)
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=1)
    model.load_state_dict(load_full_state_dict(ckpt, spec))
    model.eval()
    right = 0
    for doc in DOCS:
        scores = [loglikelihood(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        right += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    return right / len(DOCS)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("layout", [{"num_gpus": 1}, {"num_gpus": 2, "model_parallel_size": 2}],
                         ids=["single", "tp2"])
def test_training_logs_task_accuracy_at_each_evaluation(
    char_corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: dict
) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf" / "home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = write_task(tmp_path / "tasks")
    prefix = tmp_path / "results" / "run"
    config = tiny_config(char_corpus, tmp_path, train_iters=4, eval_interval=2,
                         checkpoint_factor=2, eval_iters=1, eval_tasks=[str(task)],
                         eval_results_prefix=str(prefix), **layout)
    proc = run_deepy(config, tmp_path, timeout=450)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    logged = {m["iteration"]: m["eval/train_choice/acc"] for m in read_metrics(tmp_path)
              if "eval/train_choice/acc" in m}
    assert sorted(logged) == [2, 4]  # each eval_interval; the end repeats no iteration
    for iteration, acc in logged.items():
        saved = json.loads(results_file(str(prefix), iteration).read_text())
        assert saved["iteration"] == iteration
        assert saved["results"]["train_choice"]["acc,none"] == acc
        ckpt = tmp_path / "checkpoints" / f"global_step{iteration}"
        assert acc == pytest.approx(accuracy_of_checkpoint(ckpt, tmp_path / "config.yml"))


def test_task_metrics_names_and_filters() -> None:
    results = {"results": {
        "lambada": {"alias": "lambada", "acc,none": 0.5, "acc_stderr,none": "N/A",
                    "perplexity,none": 12.0},
        "gsm": {"exact_match,strict-match": 0.25, "bad,none": float("nan"), "flag": True},
    }}
    assert task_metrics(results) == {
        "eval/lambada/acc": 0.5,
        "eval/lambada/perplexity": 12.0,
        "eval/gsm/exact_match_strict-match": 0.25,
    }


def test_results_file_names() -> None:
    assert results_file("out/run", 20, "logs") == Path("out/run_eval_results_iter_0000020.json")
    assert results_file("", 3, "logs") == Path("logs/eval_results_iter_0000003.json")
    assert results_file("", 3, None) == Path("eval_results_iter_0000003.json")


def test_live_decoder_scores_in_eval_mode_and_restores_training() -> None:
    spec = ModelSpec(hidden_size=32, num_layers=2, num_attention_heads=4, padded_vocab_size=64,
                     seq_length=16, pos_emb="rotary", hidden_dropout=0.5)
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=3)
    model.train()
    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    with live_decoder(model, Group(), vocab_size=50) as decoder:
        assert not model.training and not torch.is_grad_enabled()
        first, second = decoder.logits(tokens), decoder.logits(tokens)
        step = decoder.step(tokens, 3)
    assert model.training and torch.is_grad_enabled()
    assert torch.equal(first, second)  # dropout off
    assert torch.isinf(first[..., 50:]).all()  # padding rows of the vocabulary
    model.eval()
    reference = RecomputeDecoder(model, Group(), 50).logits(tokens[:, :3])[:, -1]
    torch.testing.assert_close(step, reference, rtol=1e-5, atol=1e-5)


def test_evaluate_results_reach_tensorboard_and_jsonl(tmp_path: Path) -> None:
    """evaluate.py's rank 0 logs eval/<task>/<metric> at the loaded checkpoint's iteration."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eval_tasks.runner import loaded_iteration, log_results

    spec = ModelSpec(hidden_size=32, num_layers=1, num_attention_heads=4, padded_vocab_size=64,
                     seq_length=16)
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=3)
    ckpt = tmp_path / "ckpt"
    save_as_checkpoint(model.state_dict(), spec, ckpt, iteration=30)
    args = SimpleNamespace(load=str(ckpt), iteration=None, tensorboard_dir=str(tmp_path / "tb"),
                           log_dir=str(tmp_path / "logs"), use_wandb=False, train_iters=None,
                           all_config={})
    results = {"results": {"piqa": {"alias": "piqa", "acc,none": 0.75, "acc_norm,none": 0.5}}}
    log_results(results, args, loaded_iteration(args))

    line = json.loads((tmp_path / "logs" / "metrics.jsonl").read_text())
    assert (line["iteration"], line["eval/piqa/acc"], line["eval/piqa/acc_norm"]) == (30, 0.75, 0.5)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    [scalar] = events.Scalars("eval/piqa/acc")
    assert (scalar.step, scalar.value) == (30, 0.75)


class Recorder:
    """Stands in for MetricsLogger."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, iteration: int, values: dict) -> None:
        self.logged.append((iteration, dict(values)))


def fake_run(tmp_path: Path, *, is_pipe: bool = False, zero_stage: int = 0) -> SimpleNamespace:
    spec = ModelSpec(hidden_size=32, num_layers=1, num_attention_heads=4, padded_vocab_size=64,
                     seq_length=16)
    model, _ = build_model(spec, ProcessGroups.single(), pipe_parallel_size=0, seed=3)
    args = SimpleNamespace(zero_optimization={"stage": zero_stage}, sequence_parallel=False,
                           recompute=False, eval_results_prefix=str(tmp_path / "r"),
                           log_dir=None)
    return SimpleNamespace(is_pipe=is_pipe, is_rank0=True, engine=SimpleNamespace(module=model),
                           groups=SimpleNamespace(tp=Group(), dp=Group(size=2)), args=args,
                           tokenizer=SimpleNamespace(vocab_size=50))


def test_task_evaluator_logs_writes_and_scores_each_iteration_once(tmp_path: Path) -> None:
    seen = []

    def runner(decoder: Any, tok: Any, tp: Group, dp: Group, args: Any) -> dict:
        seen.append((type(decoder).__name__, decoder.model.training, dp.size))
        return {"results": {"t": {"acc,none": 0.25 * len(seen)}}}

    run, metrics = fake_run(tmp_path), Recorder()
    run.engine.module.train()
    evaluator = TaskEvaluator.from_args(SimpleNamespace(eval_tasks=["t"]), runner)
    evaluator(run, 10, metrics)
    evaluator(run, 10, metrics)  # the end of training right after an eval_interval
    evaluator(run, 20, metrics)
    assert seen == [("CachedDecoder", False, 2), ("CachedDecoder", False, 2)]
    assert run.engine.module.training
    assert metrics.logged == [(10, {"eval/t/acc": 0.25}), (20, {"eval/t/acc": 0.5})]
    saved = json.loads(results_file(str(tmp_path / "r"), 20).read_text())
    assert saved == {"iteration": 20, "results": {"t": {"acc,none": 0.5}}}
    assert TaskEvaluator.from_args(SimpleNamespace(eval_tasks=None), runner) is None


def test_task_evaluator_under_zero3_scores_everything_on_every_rank(tmp_path: Path) -> None:
    seen = []

    def runner(decoder: Any, tok: Any, tp: Group, dp: Group, args: Any) -> dict:
        seen.append((type(decoder).__name__, dp.size))
        return {"results": {}}

    TaskEvaluator(runner)(fake_run(tmp_path, zero_stage=3), 5, Recorder())
    assert seen == [("RecomputeDecoder", 1)]


def test_task_evaluator_skips_a_pipeline_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def runner(*_: object) -> dict:
        raise AssertionError("a pipelined engine must not be scored")

    evaluator, metrics = TaskEvaluator(runner), Recorder()
    run = fake_run(tmp_path, is_pipe=True)
    with caplog.at_level(logging.WARNING):
        evaluator(run, 2, metrics)
        evaluator(run, 4, metrics)
    assert [r.getMessage() for r in caplog.records] == [PIPE_UNSUPPORTED]
    assert metrics.logged == []


def test_lm_eval_sees_one_process_on_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval drops the results where LOCAL_RANK != 0; the runner hides it, then restores it."""
    from eval_tasks.runner import _one_process_view

    monkeypatch.setenv("LOCAL_RANK", "1")
    with _one_process_view():
        assert os.environ["LOCAL_RANK"] == "0"
    assert os.environ["LOCAL_RANK"] == "1"
    monkeypatch.delenv("LOCAL_RANK")
    with _one_process_view():
        assert os.environ["LOCAL_RANK"] == "0"
    assert "LOCAL_RANK" not in os.environ
