"""Cross entropy over logits whose vocabulary dimension is split across the tensor-parallel group.

Nothing gathers the full ``[b, s, V]`` logits: each rank holds ``[b, s, V/tp]`` and only
``[b, s]``-sized statistics (max, sum of exponentials, the target logit) cross the network.
The math is fp32 whatever the logits' dtype, with the global max subtracted for stability.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from megatron.parallel.groups import Group


def _all_reduce(x: torch.Tensor, tp: Group, op: Any = dist.ReduceOp.SUM) -> None:
    if tp.size > 1:
        dist.all_reduce(x, op=op, group=tp.group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, tp: Group) -> torch.Tensor:
        x = logits.float()  # [b, s, v] with v = V / tp; a copy when logits are low precision
        v = x.shape[-1]
        global_max = x.amax(dim=-1)  # [b, s]
        _all_reduce(global_max, tp, dist.ReduceOp.MAX)
        x = x - global_max.unsqueeze(-1)

        start = tp.rank * v
        outside = (labels < start) | (labels >= start + v)  # target lives on another rank
        local_labels = (labels - start).masked_fill(outside, 0)
        target = x.gather(-1, local_labels.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        _all_reduce(target, tp)

        exp = x.exp_()  # x is ours (a fresh tensor from the subtraction): reuse its memory
        sum_exp = exp.sum(dim=-1)  # [b, s]
        _all_reduce(sum_exp, tp)
        loss = sum_exp.log() - target  # [b, s]

        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, outside, local_labels)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        softmax, outside, local_labels = ctx.saved_tensors
        # d loss / d logit_j = softmax_j - [j == label]; the indicator only on the owning rank.
        grad = softmax.clone()
        hit = (~outside).to(grad.dtype).unsqueeze(-1)
        grad.scatter_add_(-1, local_labels.unsqueeze(-1), -hit)
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.logits_dtype), None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, tp: Group
) -> torch.Tensor:
    """Per-token cross entropy of vocab-sharded logits.

    Args:
        logits: ``[b, s, V/tp]``, this rank's contiguous block of the vocabulary (rank ``r``
            holds ids ``[r * V/tp, (r + 1) * V/tp)``, as ``VocabParallelEmbedding`` and a
            column-parallel output layer produce).
        labels: ``[b, s]`` int64 target ids in ``[0, V)``, identical on every tp rank.
        tp: tensor-parallel group; size 1 means plain (unsharded) cross entropy.

    Returns:
        ``[b, s]`` fp32 loss per token (mask and average it in the caller).
    """
    return _VocabParallelCrossEntropy.apply(logits, labels, tp)
