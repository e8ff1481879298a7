"""The transformer MLP: ``linear2(act(linear1(x)))``, column- then row-parallel.

For gated units linear1 produces ``[value, gate]`` halves per tensor-parallel rank (GPT-NeoX's
per-rank layout), so the full linear1 tensor is ``[values; gates]`` with both sections split
across ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from megatron.model.activations import ACTIVATIONS
from megatron.model.init import mark_sections
from megatron.model.sharding import no_init, per_rank, replicated
from megatron.model.spec import ModelSpec
from megatron.parallel.groups import Group
from megatron.parallel.layers import ColumnParallelLinear, RowParallelLinear, set_tp_attributes


class MLP(nn.Module):
    """``[b, s, h] -> [b, s, h]`` feed-forward block with GPT-NeoX names linear1/linear2."""

    def __init__(self, spec: ModelSpec, tp: Group) -> None:
        super().__init__()
        self.act = ACTIVATIONS.get(spec.activation)
        width = spec.mlp_width
        per_rank(width, tp, "MLP intermediate size")
        bias = spec.use_bias_in_mlp
        self.tp, self.sp = tp, spec.sequence_parallel
        self.linear1 = ColumnParallelLinear(spec.hidden_size, spec.linear1_width, tp,
                                            bias=bias, sequence_parallel=self.sp,
                                            init_method=no_init)
        if self.act.gated:
            for p in self.linear1.parameters():
                mark_sections(p, [width, width])
        self.linear2 = RowParallelLinear(width, spec.hidden_size, tp, bias=bias,
                                         input_is_parallel=True, sequence_parallel=self.sp,
                                         skip_bias_add=True, init_method=no_init)
        if self.linear2.bias is not None:  # its gradient is summed in forward's ``replicated``
            set_tp_attributes(self.linear2.bias, None, sequence_parallel=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.linear1(x))  # [b, s, width/tp]
        out, bias = self.linear2(hidden)  # [b, s, h] ([b, s/tp, h] with sequence parallelism)
        return out if bias is None else out + replicated(bias, self.tp, self.sp)
