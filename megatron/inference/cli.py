"""Command-line extras of generate.py and evaluate.py on top of the worker's config flags.

``deepy.py generate.py CONFIGS... -i prompts.txt -o samples.jsonl``: the worker receives the
config through ``--megatron_config``; ``-i``/``-o`` (when the launcher forwards them) override
``sample_input_file``/``sample_output_file``. An input file with no ``text_gen_type`` set
means 'input-file'.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def split_extras(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Pull ``-i``/``-o`` out of ``argv``; returns them and the remaining arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--sample_input_file", default=None)
    parser.add_argument("-o", "--sample_output_file", default=None)
    return parser.parse_known_args(argv)


def with_extras(args: Any, extras: argparse.Namespace) -> Any:
    """A copy of ``args`` (a frozen dataclass) with the command-line files applied."""
    changes: dict[str, Any] = {}
    if extras.sample_input_file:
        changes["sample_input_file"] = extras.sample_input_file
        if getattr(args, "text_gen_type", None) is None:
            changes["text_gen_type"] = "input-file"
    if extras.sample_output_file:
        changes["sample_output_file"] = extras.sample_output_file
    return dataclasses.replace(args, **changes) if changes else args
