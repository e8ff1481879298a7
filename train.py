#!/usr/bin/env python
"""Worker entry point for training; started by deepy.py through DeepSpeed's launcher.

Each worker rebuilds the launcher's NeoXArgs from its command line, checks it is the
same config, and runs the loop in megatron.training.
"""

from __future__ import annotations

import sys

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.utils.process_exit import exit_after_cleanup


def main(argv: list[str] | None = None) -> int:
    try:
        args = NeoXArgs.consume_neox_args(argv)
    except ConfigError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 2
    from megatron.data.errors import DataError
    from megatron.training import pretrain
    from megatron.training.checkpointing import CheckpointError

    runner = None
    if args.eval_tasks:
        from eval_tasks.runner import score_decoder as runner
    try:
        return pretrain(args, task_runner=runner)
    except (CheckpointError, DataError) as err:
        print(f"train.py: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    exit_after_cleanup(main())  # no interpreter teardown (megatron/utils/process_exit.py)
