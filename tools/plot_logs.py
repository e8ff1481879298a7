"""Plot loss and throughput curves from a run's metrics.jsonl or TensorBoard event files.

Usage:
    python tools/plot_logs.py LOG_DIR_OR_FILE [-o curves.png]

LOG_DIR_OR_FILE is a ``metrics.jsonl`` file, a directory holding one, or a directory of
TensorBoard event files (``tensorboard_dir``). The PNG has two panels: training (and
validation) loss, and tokens per second, both against the iteration.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

# Series name -> (metrics.jsonl key, TensorBoard tag).
SERIES = {
    "train loss": ("lm_loss", "train/lm_loss"),
    "validation loss": ("validation/lm_loss", "validation/lm_loss"),
    "tokens/s": ("tokens_per_sec", "runtime/tokens_per_sec"),
}
Curves = dict[str, list[tuple[int, float]]]


def read_jsonl(path: Path) -> Curves:
    """Curves from metrics.jsonl; null values (not logged at that iteration) are skipped."""
    curves: Curves = {name: [] for name in SERIES}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        for name, (key, _) in SERIES.items():
            if record.get(key) is not None:
                curves[name].append((int(record["iteration"]), float(record[key])))
    return curves


def read_tensorboard(directory: Path) -> Curves:
    """Curves from the TensorBoard event files in ``directory``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    return {
        name: [(e.step, e.value) for e in acc.Scalars(tag)] if tag in tags else []
        for name, (_, tag) in SERIES.items()
    }


def read_curves(source: Path) -> Curves:
    """Dispatch on what ``source`` is: a jsonl file, a dir with metrics.jsonl, or event files."""
    if source.is_file():
        return read_jsonl(source)
    if (source / "metrics.jsonl").is_file():
        return read_jsonl(source / "metrics.jsonl")
    if source.is_dir() and any(source.rglob("events.out.tfevents.*")):
        return read_tensorboard(source)
    raise FileNotFoundError(f"{source}: expected metrics.jsonl or TensorBoard event files")


def plot(curves: Curves, output: Path, title: str = "") -> None:
    """Write a two-panel PNG: loss curves and throughput."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (loss_ax, speed_ax) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for name, style in (("train loss", "-"), ("validation loss", "o--")):
        if curves[name]:
            xs, ys = zip(*sorted(curves[name]), strict=True)
            loss_ax.plot(xs, ys, style, label=name)
    loss_ax.set_ylabel("lm loss")
    loss_ax.legend()
    if curves["tokens/s"]:
        xs, ys = zip(*sorted(curves["tokens/s"]), strict=True)
        speed_ax.plot(xs, ys, color="tab:green")
    speed_ax.set_ylabel("tokens / s")
    speed_ax.set_xlabel("iteration")
    fig.suptitle(title)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, read the logs, write the PNG; exit 2 when no curve is found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="metrics.jsonl, its directory, or a TB dir")
    parser.add_argument("-o", "--output", type=Path, default=Path("curves.png"))
    args = parser.parse_args(argv)
    try:
        curves = read_curves(args.source)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 2
    if not any(curves.values()):
        print(f"error: {args.source} holds no lm_loss or tokens_per_sec values")
        return 2
    plot(curves, args.output, title=str(args.source))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
