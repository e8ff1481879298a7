#!/usr/bin/env python
"""Worker entry point for text generation; started by deepy.py through DeepSpeed's launcher.

    ./deepy.py generate.py configs/125M.yml configs/text_generation.yml [-i in.txt] [-o out.jsonl]

``text_gen_type`` picks the mode (unconditional, input-file, interactive); samples are
written as JSON lines to ``sample_output_file``. The logic lives in megatron.inference.
"""

from __future__ import annotations

import logging
import sys

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.utils.process_exit import exit_after_cleanup


def main(argv: list[str] | None = None) -> int:
    from megatron.inference.cli import split_extras, with_extras

    extras, rest = split_extras(sys.argv[1:] if argv is None else argv)
    try:
        args = with_extras(NeoXArgs.consume_neox_args(rest), extras)
    except ConfigError as err:
        print(f"generate.py: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="generate: %(message)s")
    from megatron.inference import InferenceError, run_text_generation, start_inference

    try:
        run_text_generation(start_inference(args))
    except InferenceError as err:
        print(f"generate.py: {err}", file=sys.stderr)
        return 2
    from megatron.training.engine import shutdown_distributed

    shutdown_distributed()  # before interpreter teardown: see its docstring
    return 0


if __name__ == "__main__":
    exit_after_cleanup(main())  # no interpreter teardown (megatron/utils/process_exit.py)
