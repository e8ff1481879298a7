"""Independent reference computations that tests compare the product against.

Written as plainly as possible (one full forward pass per question, no cache, no batching)
so that a bug in the product's decoding or scoring cannot hide in the oracle too.
"""

from __future__ import annotations

import torch


def greedy_text(model: torch.nn.Module, tok: object, prompt: str, steps: int) -> str:
    """Independent argmax loop over the tokenizer's vocabulary, stopping at eod."""
    ids = tok.tokenize(prompt)
    start = len(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model((torch.tensor([ids]), torch.arange(len(ids))[None]))[0, -1]
            nxt = int(logits[: tok.vocab_size].argmax())
            if nxt == tok.eod:
                break
            ids.append(nxt)
    return tok.detokenize(ids[start:])


def loglikelihood(model: torch.nn.Module, tok: object, context: str, cont: str) -> float:
    """Sum of the continuation's log-probabilities, one forward pass over the whole text."""
    ctx = tok.tokenize(context) if context else [tok.eod]
    ids = ctx + tok.tokenize(cont)
    with torch.no_grad():
        logits = model((torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1)[None]))[0]
    logp = torch.log_softmax(logits[:, : tok.vocab_size].float(), -1)
    return sum(logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))
