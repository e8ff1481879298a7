"""Inference: sampling, batched generation, log-likelihood scoring and model loading.

Public API::

    im = start_inference(args)                  # distributed init, tokenizer, model, weights
    results = run_text_generation(im)           # GPT-NeoX's text_gen_type modes
    gen = im.text_generator(); gen.generate(["prompt", ...]) -> [GenerationResult]
    generate_tokens(decoder, prompt_ids, limits, params) -> [(new_ids, stopped)]
    score_requests(decoder, [(context_ids, continuation_ids)], max_length, batch_size)

The model is reached only through a ``Decoder`` (``decoder.py``): ``CachedDecoder`` (the
model's KV cache, the default) or ``RecomputeDecoder`` (``recompute: true``).
"""

from megatron.inference.decoder import CachedDecoder, Decoder, RecomputeDecoder
from megatron.inference.errors import InferenceError
from megatron.inference.generation import (
    GenerationLimits,
    GenerationResult,
    TextGenerator,
    generate_tokens,
)
from megatron.inference.modes import MODES, run_text_generation, write_jsonl
from megatron.inference.sampling import SamplingParams, sample_next
from megatron.inference.scoring import score_requests
from megatron.inference.setup import InferenceModel, build_inference_model, start_inference

__all__ = ["MODES", "CachedDecoder", "Decoder", "GenerationLimits", "GenerationResult",
           "InferenceError",
           "InferenceModel", "RecomputeDecoder", "SamplingParams", "TextGenerator",
           "build_inference_model", "generate_tokens", "run_text_generation", "sample_next",
           "score_requests", "start_inference", "write_jsonl"]
