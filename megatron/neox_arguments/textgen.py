"""Text generation group: sampling settings for generate.py and evaluation."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class TextGenArgs:
    """How samples are drawn when the model generates text."""

    text_gen_type: Literal["unconditional", "input-file", "interactive", "precompute"] | None = (
        None
    )
    """Where prompts come from (none, a file, the terminal), or precompute reference log-probs."""

    precompute_model_name: str | None = None
    """Name under which precomputed reference-model log-probs are saved (DPO)."""

    temperature: float = 0.0
    """Sampling temperature; 0 is greedy."""

    top_p: float = 0.0
    """Nucleus sampling threshold; 0 disables it."""

    top_k: int = 0
    """Sample among the k most likely tokens; 0 disables it."""

    return_logits: bool = False
    """Also return the logits of generated tokens."""

    maximum_tokens: int = 64
    """Largest number of tokens generated per prompt."""

    prompt_end: str = "\n"
    """String that separates prompts in the input file."""

    sample_input_file: str | None = None
    """Prompts for text_gen_type 'input-file'."""

    sample_output_file: str = "samples.txt"
    """Where generated samples are written."""

    num_samples: int = 1
    """Samples per prompt (or in total for unconditional generation)."""

    recompute: bool = False
    """Recompute the whole sequence each step instead of using the KV cache."""

    eval_results_prefix: str = ""
    """Prefix of the evaluation results file."""

    eval_tasks: list[str] | None = None
    """lm-eval tasks to run."""

    eval_tasks_path: str | None = None
    """Ours: a folder of local lm-eval task YAMLs searched before the harness's registry."""

    stop_tokens: list[str] | None = None
    """Strings that end a generated sample, besides the end-of-document token."""
