#!/usr/bin/env python
"""Worker entry point for lm-evaluation-harness tasks; started by deepy.py.

    ./deepy.py evaluate.py configs/125M.yml configs/eval.yml   # with eval_tasks: [...]

This file is named like Hugging Face's ``evaluate`` package, which lm-eval imports. Run as a
script, its folder is first on ``sys.path`` and would shadow that package, so before
anything imports lm-eval the real package is imported with this folder hidden. Import this
file under another module name (e.g. via importlib) if you need it as a module.
"""

from __future__ import annotations

import importlib
import os
import sys


def _import_hf_evaluate() -> None:
    """Put Hugging Face's ``evaluate`` in ``sys.modules`` (if it is installed)."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    mine = sys.modules.get("evaluate")
    if mine is not None and os.path.dirname(os.path.abspath(getattr(mine, "__file__", "") or
                                                            "")) == here:
        del sys.modules["evaluate"]  # this very file, imported as `evaluate`
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        importlib.import_module("evaluate")
    except ImportError:
        pass  # not installed: only tasks that need it will fail, with their own message
    finally:
        sys.path[:] = saved


_import_hf_evaluate()

from megatron.neox_arguments import ConfigError, NeoXArgs  # noqa: E402
from megatron.utils.process_exit import exit_after_cleanup  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    try:
        args = NeoXArgs.consume_neox_args(argv)
    except ConfigError as err:
        print(f"evaluate.py: {err}", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.INFO, format="evaluate: %(message)s")
    from eval_tasks.runner import EvalError, run_from_args
    from megatron.inference import InferenceError

    try:
        run_from_args(args)
    except (EvalError, InferenceError) as err:
        print(f"evaluate.py: {err}", file=sys.stderr)
        return 2
    from megatron.training.engine import shutdown_distributed

    shutdown_distributed()  # before interpreter teardown: see its docstring
    return 0


if __name__ == "__main__":
    exit_after_cleanup(main())  # no interpreter teardown (megatron/utils/process_exit.py)
