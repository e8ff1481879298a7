"""Rank-aware logging: every record carries ``[rank N]`` and non-zero ranks stay quiet.

Multi-process runs print the same summary once per process unless something filters them.
We keep Python's ``logging`` (so libraries and tests can capture records) and add one filter
that stamps the rank on each record and drops INFO/DEBUG records from ranks other than 0.
Warnings and errors pass on every rank, because a failure on rank 3 must be visible.
"""

from __future__ import annotations

import logging
import os
import sys

_ROOT = "megatron"
_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"
_state: dict[str, int | bool] = {"rank": -1, "all_ranks": False}


def _current_rank() -> int:
    """The rank set by :func:`configure_logging`, else the launcher's ``RANK``, else 0."""
    rank = int(_state["rank"])
    if rank >= 0:
        return rank
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class RankFilter(logging.Filter):
    """Adds ``record.rank`` and silences sub-WARNING records off rank 0."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the rank; keep rank 0's records, warnings and worse, or all when asked."""
        rank = _current_rank()
        record.rank = rank
        return rank == 0 or bool(_state["all_ranks"]) or record.levelno >= logging.WARNING


def configure_logging(
    rank: int | None = None, level: int = logging.INFO, *, all_ranks: bool = False
) -> logging.Logger:
    """Install one stderr handler with the rank prefix on the ``megatron`` logger tree.

    Calling it again replaces the handler rather than adding a second one, so entry points and
    tests may call it freely.

    Args:
        rank: this process's global rank; None reads ``RANK`` from the environment.
        level: the threshold for the ``megatron`` logger tree.
        all_ranks: let INFO records through on every rank (debugging).

    Returns:
        The ``megatron`` root logger.
    """
    _state["rank"] = -1 if rank is None else rank
    _state["all_ranks"] = all_ranks
    root = logging.getLogger(_ROOT)
    for handler in list(root.handlers):
        if getattr(handler, "_neox_rank_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._neox_rank_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(RankFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return root


def get_logger(name: str) -> logging.Logger:
    """Return a logger under the ``megatron`` tree so the rank-prefix handler applies to it.

    Names outside the tree (``tools.x``, ``__main__``) are re-rooted as ``megatron.<name>``.
    """
    if name != _ROOT and not name.startswith(_ROOT + "."):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)
