"""Local lm-eval tasks written by the tests, and offline Hugging Face caches in tmp."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

# Before any test imports `datasets`: keep its cache out of the home folder.
_CACHE = tempfile.mkdtemp(prefix="hf_cache_eval_tests_")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_CACHE, "datasets"))
os.environ.setdefault("HF_HOME", os.path.join(_CACHE, "home"))

CHOICE_DOCS = [
    {"question": "abc", "choices": [" d", " xyz", " q"], "answer": 0},
    {"question": "hello wor", "choices": [" ld", " m"], "answer": 1},
    {"question": "", "choices": ["a", "bb"], "answer": 1},
]
ROLLING_DOCS = [{"text": "the quick brown fox jumps over the lazy dog"}, {"text": "hi there"}]
GEN_DOCS = [{"prompt": "abc", "target": "d"}, {"prompt": "hello", "target": "x"}]


def _write(folder: Path, name: str, docs: list[dict], yaml_body: str) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\n{yaml_body}")


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with three tiny tasks: multiple choice, rolling perplexity, generation."""
    folder = tmp_path_factory.mktemp("tasks")
    _write(folder, "tiny_choice", CHOICE_DOCS,
           "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
           "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
           "metric_list:\n  - metric: acc\n")
    _write(folder, "tiny_rolling", ROLLING_DOCS,
           "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
           "metric_list:\n  - metric: word_perplexity\n")
    _write(folder, "tiny_gen", GEN_DOCS,
           "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
           "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 4\n  do_sample: false\n"
           "metric_list:\n  - metric: exact_match\n")
    return folder


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)  # the test machine is small and shared
