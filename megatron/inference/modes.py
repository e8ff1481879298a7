"""GPT-NeoX's ``text_gen_type`` modes: unconditional, input-file and interactive.

Each mode is registered in ``MODES`` and returns the results it produced; rank 0 writes
them to ``sample_output_file`` as JSON lines (context, text, length, finished, message,
duration_seconds). Prompts are shared among data-parallel replicas and the results gathered.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import torch.distributed as dist

from megatron.inference.dp import gather_blocks, my_block
from megatron.inference.errors import InferenceError
from megatron.inference.generation import GenerationResult
from megatron.inference.setup import InferenceModel

LOG = logging.getLogger(__name__)

Mode = Callable[[InferenceModel, TextIO, TextIO], list[GenerationResult]]
MODES: dict[str, Mode] = {}


def register(name: str) -> Callable[[Mode], Mode]:
    def add(fn: Mode) -> Mode:
        MODES[name] = fn
        return fn

    return add


def get_mode(name: str | None) -> Mode:
    """The mode registered as ``name`` (raises with the valid names)."""
    if name not in MODES:
        raise InferenceError(f"text_gen_type = {name!r} is not one of {sorted(MODES)}")
    return MODES[name]


def generate_all(im: InferenceModel, prompts: list[str]) -> list[GenerationResult]:
    """Complete every prompt, each data-parallel replica taking its own block."""
    local = im.text_generator().generate(my_block(prompts, im.groups.dp))
    return gather_blocks(local, im.groups.dp)


def read_prompts(path: str, prompt_end: str) -> list[str]:
    """Prompts of ``path`` separated by ``prompt_end``, stripped, empty ones dropped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise InferenceError(f"sample_input_file = {path!r} cannot be read: {err}") from err
    return [p.strip() for p in text.split(prompt_end or "\n") if p.strip()]


@register("unconditional")
def unconditional(im: InferenceModel, stdin: TextIO, stdout: TextIO) -> list[GenerationResult]:
    """``num_samples`` completions that start from end-of-document."""
    return generate_all(im, [""] * int(im.args.num_samples))


@register("input-file")
def input_file(im: InferenceModel, stdin: TextIO, stdout: TextIO) -> list[GenerationResult]:
    """``num_samples`` completions of every prompt in ``sample_input_file``."""
    if not im.args.sample_input_file:
        raise InferenceError("text_gen_type 'input-file' needs sample_input_file (or -i FILE)")
    prompts = read_prompts(im.args.sample_input_file, im.args.prompt_end)
    LOG.info("generating for %d prompts from %s", len(prompts), im.args.sample_input_file)
    return generate_all(im, [p for p in prompts for _ in range(int(im.args.num_samples))])


@register("interactive")
def interactive(im: InferenceModel, stdin: TextIO, stdout: TextIO) -> list[GenerationResult]:
    """Read prompts from the terminal on rank 0 until 'stop' or end of input."""
    results: list[GenerationResult] = []
    generator = im.text_generator(batch_size=1)
    while True:
        prompt = _shared_prompt(im, stdin, stdout)
        if prompt is None:
            return results
        results += generator.generate([prompt] * int(im.args.num_samples))
        if im.is_rank0:
            for r in results[-int(im.args.num_samples):]:
                stdout.write(f"{r.context}{r.text}\n")
            stdout.flush()


def _shared_prompt(im: InferenceModel, stdin: TextIO, stdout: TextIO) -> str | None:
    """Rank 0 reads a prompt; every rank gets it (None ends the session)."""
    prompt: str | None = None
    if im.is_rank0:
        stdout.write("Context prompt (stop to exit) >>> ")
        stdout.flush()
        line = stdin.readline()
        prompt = None if not line or line.strip() == "stop" else line.rstrip("\n")
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [prompt]
        dist.broadcast_object_list(box, src=0)
        prompt = box[0]
    return prompt


def write_jsonl(results: list[GenerationResult], path: str) -> None:
    """One JSON object per line, in prompt order."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.to_json()) + "\n")


def run_text_generation(im: InferenceModel, stdin: TextIO | None = None,
                        stdout: TextIO | None = None) -> list[GenerationResult]:
    """Run the configured mode and write ``sample_output_file`` on rank 0."""
    mode = get_mode(im.args.text_gen_type)
    results = mode(im, stdin or sys.stdin, stdout or sys.stdout)
    if im.is_rank0 and im.args.sample_output_file:
        write_jsonl(results, im.args.sample_output_file)
        LOG.info("wrote %d samples to %s", len(results), im.args.sample_output_file)
    return results
