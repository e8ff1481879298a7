"""Config mistakes stop at the launcher: exit code 2, one clear message, no worker started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.launch import REPO, tiny_config


def _deepy(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "deepy.py"), "train.py", *map(str, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_unknown_key_names_file_and_suggestion(char_corpus: str, tmp_path: Path) -> None:
    config = tiny_config(char_corpus, tmp_path)
    config["num_atention_heads"] = config.pop("num_attention_heads")
    path = _write(tmp_path / "typo.yml", config)
    proc = _deepy(path)
    assert proc.returncode == 2, proc.stderr
    assert "num_atention_heads" in proc.stderr
    assert "num_attention_heads" in proc.stderr
    assert "typo.yml" in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_key_in_two_files_names_both(char_corpus: str, tmp_path: Path) -> None:
    config = tiny_config(char_corpus, tmp_path)
    first = _write(tmp_path / "model.yml", config)
    second = _write(tmp_path / "extra.yml", {"hidden_size": 128})
    proc = _deepy(first, second)
    assert proc.returncode == 2
    assert "hidden_size" in proc.stderr
    assert "model.yml" in proc.stderr and "extra.yml" in proc.stderr


def test_missing_dataset_is_reported_before_launch(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "corpus_text_document"
    path = _write(tmp_path / "cfg.yml", tiny_config(str(missing), tmp_path))
    proc = _deepy(path)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_unsupported_feature_is_refused(char_corpus: str, tmp_path: Path) -> None:
    config = tiny_config(char_corpus, tmp_path, moe_num_experts=4)
    proc = _deepy(_write(tmp_path / "moe.yml", config))
    assert proc.returncode == 2
    assert "not supported yet" in proc.stderr and "moe_num_experts" in proc.stderr
