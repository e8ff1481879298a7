"""Where GPT-NeoX users look for text generation: a pointer to `megatron.inference`.

GPT-NeoX keeps sampling and generation in `megatron/text_generation_utils.py`; ours live
in the `megatron.inference` package. This module re-exports its public names so scripts
written against the old location keep importing.
"""

from megatron.inference import (
    MODES,
    GenerationLimits,
    GenerationResult,
    InferenceModel,
    SamplingParams,
    TextGenerator,
    generate_tokens,
    run_text_generation,
    sample_next,
    score_requests,
    start_inference,
)

__all__ = [
    "MODES",
    "GenerationLimits",
    "GenerationResult",
    "InferenceModel",
    "SamplingParams",
    "TextGenerator",
    "generate_tokens",
    "run_text_generation",
    "sample_next",
    "score_requests",
    "start_inference",
]
