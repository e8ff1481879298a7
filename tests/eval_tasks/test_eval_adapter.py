"""The lm-eval adapter on a tiny random model, checked against independent computations."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from eval_tasks.eval_adapter import NeoXEvalAdapter
from eval_tasks.runner import (
    EvalError,
    check_task_names,
    evaluate_tasks,
    resolve_tasks,
    write_results,
)
from megatron.inference.decoder import RecomputeDecoder
from megatron.parallel import ProcessGroups
from tests.eval_tasks.conftest import CHOICE_DOCS
from tests.inference.conftest import TinyCharTokenizer, tiny_model, tiny_spec

TOK = TinyCharTokenizer()
V = TOK.vocab_size


def req(*args: object) -> SimpleNamespace:
    return SimpleNamespace(args=args)


def token_logprobs(model: torch.nn.Module, history: list[int], target: int) -> float:
    """log p(target | history) from one forward pass over ``history`` alone."""
    with torch.no_grad():
        x = torch.tensor([history])
        logits = model((x, torch.arange(len(history))[None]))[0, -1].float()
    logits[V:] = float("-inf")
    return torch.log_softmax(logits, -1)[target].item()


def independent_loglikelihood(model: torch.nn.Module, context: str, cont: str) -> float:
    ctx = TOK.tokenize(context) if context else [TOK.eod]
    ids = TOK.tokenize(cont)
    return sum(token_logprobs(model, ctx + ids[:i], t) for i, t in enumerate(ids))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.set_num_threads(1)
    return tiny_model(tiny_spec(seq_length=8))


def adapter(model: torch.nn.Module, batch_size: int = 3) -> NeoXEvalAdapter:
    decoder = RecomputeDecoder(model, ProcessGroups.single().tp, V)
    return NeoXEvalAdapter(decoder, TOK, max_length=8, batch_size=batch_size)


def test_loglikelihood_equals_sum_of_log_softmax(model: torch.nn.Module) -> None:
    pairs = [("abc", " d"), ("hello", " w"), ("", "ab"), ("x ", "yz")]
    got = adapter(model).loglikelihood([req(c, x) for c, x in pairs])
    for (context, cont), (logprob, _) in zip(pairs[:3], got, strict=False):
        assert logprob == pytest.approx(independent_loglikelihood(model, context, cont),
                                        abs=1e-4)
    # trailing context spaces move into the continuation: "x " + "yz" scores " yz" after "x"
    assert got[3][0] == pytest.approx(independent_loglikelihood(model, "x", " yz"), abs=1e-4)


def test_long_requests_keep_the_newest_max_length_tokens(model: torch.nn.Module) -> None:
    context, cont = "abcdefghij", "kl"  # 12 tokens: the model reads tokens 3..10 (8 of them)
    everything = TOK.tokenize(context + cont)
    expected = sum(token_logprobs(model, everything[3:j], everything[j]) for j in (10, 11))
    [(got, _)] = adapter(model).loglikelihood([req(context, cont)])
    assert got == pytest.approx(expected, abs=1e-4)


def test_is_greedy_matches_argmax_continuation(model: torch.nn.Module) -> None:
    ctx = TOK.tokenize("abc")
    ids = list(ctx)
    for _ in range(2):
        with torch.no_grad():
            logits = model((torch.tensor([ids]), torch.arange(len(ids))[None]))[0, -1, :V]
        ids.append(int(logits.argmax()))
    greedy = TOK.detokenize(ids[3:])
    other = "a" if greedy[0] != "a" else "b"
    (_, yes), (_, no) = adapter(model).loglikelihood([req("abc", greedy), req("abc", other)])
    assert yes and not no


def test_rolling_loglikelihood_uses_disjoint_windows(model: torch.nn.Module) -> None:
    text = "the quick brown fox j"  # 21 tokens, windows of 8 (seq_length)
    t = TOK.tokenize(text)
    # window 1 predicts t[0:8] after eod; window 2 t[8:16] seeing t[7:i]; window 3 t[16:21]
    # seeing t[12:i] (each window holds at most 8 inputs).
    expected = sum(token_logprobs(model, [TOK.eod] + t[:i], t[i]) for i in range(8))
    expected += sum(token_logprobs(model, t[7:i], t[i]) for i in range(8, 16))
    expected += sum(token_logprobs(model, t[12:i], t[i]) for i in range(16, 21))
    [got] = adapter(model, batch_size=2).loglikelihood_rolling([req(text)])
    assert got == pytest.approx(expected, abs=1e-4)


def test_generate_until_cuts_at_stop_string(model: torch.nn.Module) -> None:
    ids = TOK.tokenize("ab")
    for _ in range(4):
        with torch.no_grad():
            logits = model((torch.tensor([ids]), torch.arange(len(ids))[None]))[0, -1, :V]
        ids.append(int(logits.argmax()))
    free = TOK.detokenize([i for i in ids[2:] if i])  # eod (0) would stop it
    if 0 in ids[2:]:
        free = TOK.detokenize(ids[2 : ids.index(0, 2)])
    stop = free[1] if len(free) > 1 else "."
    [a, b] = adapter(model).generate_until([req("ab", {"until": ["."], "max_gen_toks": 4}),
                                            req("ab", {"until": [stop], "max_gen_toks": 4})])
    assert a == free.split(".")[0]
    assert b == free.split(stop)[0]


def test_evaluate_local_task_and_write_results(model: torch.nn.Module, task_dir: Path,
                                               tmp_path: Path) -> None:
    results = evaluate_tasks(adapter(model), ["tiny_choice"], include_path=str(task_dir),
                             bootstrap_iters=0)
    correct = []
    for doc in CHOICE_DOCS:
        scores = [independent_loglikelihood(model, doc["question"], c) for c in doc["choices"]]
        correct.append(float(max(range(len(scores)), key=scores.__getitem__) == doc["answer"]))
    acc = results["results"]["tiny_choice"]["acc,none"]
    assert acc == pytest.approx(sum(correct) / len(correct))
    path = write_results(results, str(tmp_path / "out" / "run"))
    assert path.name.startswith("run_eval_results_") and path.suffix == ".json"
    assert json.loads(path.read_text())["results"]["tiny_choice"]["acc,none"] == acc


def test_limit_scores_only_the_first_documents(model: torch.nn.Module, task_dir: Path) -> None:
    results = evaluate_tasks(adapter(model), ["tiny_choice"], include_path=str(task_dir),
                             limit=1, bootstrap_iters=0)
    assert results["n-samples"]["tiny_choice"] == {"original": 3, "effective": 1}


def test_unknown_task_is_a_clear_error(task_dir: Path) -> None:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    with pytest.raises(EvalError, match=r"tiny_choise.*tiny_choice"):
        check_task_names(["tiny_choice", "tiny_choise"], manager)
    check_task_names(["tiny_choice", "tiny_gen"], manager)  # known names pass


def test_missing_task_data_fails_with_offline_message(model: torch.nn.Module,
                                                      tmp_path: Path) -> None:
    (tmp_path / "ghost.yaml").write_text(
        "task: ghost_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'absent.jsonl'}\ntest_split: test\n"
        "output_type: loglikelihood\ndoc_to_text: '{{a}}'\ndoc_to_target: '{{b}}'\n")
    with pytest.raises(EvalError, match="offline"):
        evaluate_tasks(adapter(model), ["ghost_task"], include_path=str(tmp_path))


def test_task_yaml_paths_name_the_task_and_its_folder(task_dir: Path, tmp_path: Path) -> None:
    names, folders = resolve_tasks([str(task_dir / "tiny_gen.yaml"), "lambada_openai"], None)
    assert names == ["tiny_gen", "lambada_openai"] and folders == [str(task_dir)]
    (tmp_path / "bad.yaml").write_text("dataset_path: json\n")
    with pytest.raises(EvalError, match="bad.yaml"):
        resolve_tasks([str(tmp_path / "bad.yaml")], None)
    with pytest.raises(EvalError, match="not a folder"):
        resolve_tasks(["x"], str(tmp_path / "nowhere"))
