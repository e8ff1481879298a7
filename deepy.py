#!/usr/bin/env python
"""Launcher: validate the config here, print the plan, then start workers via DeepSpeed.

    ./deepy.py train.py configs/125M.yml configs/local_setup.yml
    ./deepy.py train.py -d configs 125M local_setup

A config error stops here with exit code 2, before any worker process exists.
"""

from __future__ import annotations

import logging
import os
import sys

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.neox_arguments.support import (
    missing_paths,
    performance_fallbacks,
    unsupported_features,
)


def load(argv: list[str] | None) -> tuple[str, NeoXArgs]:
    """Parse deepy's command line and build the validated config (raises ConfigError)."""
    user_script, paths, overrides = NeoXArgs.consume_deepy_launch(argv)
    # Resources are detected from the runner keys (hostfile, include, num_gpus, ...).
    args = NeoXArgs.from_ymls(paths, overwrite_values=overrides or None)
    missing = [f"missing file: {path}" for path in missing_paths(args)]
    problems = [*unsupported_features(args), *missing]
    if problems:
        raise ConfigError("\n".join(problems))
    return user_script, args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="deepy: %(message)s")
    try:
        user_script, args = load(argv)
    except ConfigError as err:
        print(f"deepy.py: config error:\n{err}", file=sys.stderr)
        return 2
    for warning in performance_fallbacks(args):
        print(f"deepy.py: warning: {warning}", file=sys.stderr)
    from megatron.training.plan import launch_nodes, plan_lines

    for line in plan_lines(args):
        print(f"deepy.py: {line}")
    sys.stdout.flush()
    from megatron.launch import (
        LaunchError,
        choose_allocator,
        export_env,
        redact,
        runner_argv,
        thread_env,
        worker_exports,
    )

    try:
        argv = runner_argv(args, user_script, args.to_worker_argv())
        allocator = choose_allocator(os.environ)
    except LaunchError as err:
        print(f"deepy.py: launch settings error:\n{err}", file=sys.stderr)
        return 2
    from deepspeed.launcher import runner

    per_node = -(-args.global_num_gpus // launch_nodes(args))
    os.environ.update(thread_env(os.environ, per_node))  # cores shared, not oversubscribed
    os.environ.update(allocator.env)  # freed tensors reused, not faulted in again
    print(f"deepy.py: worker malloc: {allocator.describe()}")
    exports = worker_exports(os.environ)
    export_env(runner.EXPORT_ENVS, exports)
    if exports:
        print(f"deepy.py: exporting to workers: {sorted(redact(exports))}")
    return int(runner.main(argv) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
