"""tools/plot_logs.py writes a PNG from a generated metrics.jsonl and from TensorBoard files."""

import json
from pathlib import Path

import pytest

from tools import plot_logs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _jsonl(path: Path) -> Path:
    lines = [{"iteration": i, "lm_loss": 10.0 / i, "tokens_per_sec": 1000.0 + i,
              "validation/lm_loss": 9.0 / i if i % 5 == 0 else None} for i in range(1, 21)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_png_from_jsonl(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "metrics.jsonl")
    curves = plot_logs.read_jsonl(source)
    assert curves["validation loss"] == [(5, 1.8), (10, 0.9), (15, 0.6), (20, 0.45)]
    out = tmp_path / "out" / "curves.png"
    assert plot_logs.main([str(tmp_path), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000  # a real two-panel figure


def test_png_from_tensorboard(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tb")) as writer:
        for i in range(1, 6):
            writer.add_scalar("train/lm_loss", 5.0 - i, i)
            writer.add_scalar("runtime/tokens_per_sec", 100.0 * i, i)
    curves = plot_logs.read_curves(tmp_path / "tb")
    assert curves["train loss"] == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0), (5, 0.0)]
    out = tmp_path / "tb.png"
    assert plot_logs.main([str(tmp_path / "tb"), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_missing_logs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_logs.main([str(tmp_path / "nothing")]) == 2
    assert "expected metrics.jsonl" in capsys.readouterr().out
