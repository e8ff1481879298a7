"""Parallelism group: tensor, pipeline, sequence and expert (MoE) parallel layout keys."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class ParallelArgs:
    """How the model is split across devices; the data-parallel size follows from these."""

    pipe_parallel_size: int = 0
    """Pipeline stages; 0 builds a plain module without DeepSpeed's pipeline engine."""

    model_parallel_size: int = 1
    """Tensor (model) parallel size: each layer's weights are split over this many ranks."""

    pipe_partition_method: str = "type:transformer|mlp"
    """How layers are spread over pipeline stages: 'parameters', 'uniform' or 'type:REGEX'."""

    world_size: int | None = None
    """Total number of processes; filled in by the launcher, not by the user."""

    is_pipe_parallel: bool = False
    """Derived: True when pipe_parallel_size >= 1 (the DeepSpeed pipeline engine is used)."""

    sequence_parallel: bool = False
    """Megatron-style sequence parallelism: shard norm/dropout activations over the TP group."""

    expert_interval: int = 2
    """With MoE, every this-many layers is an expert layer."""

    moe_num_experts: int = 1
    """Number of experts per MoE layer; 1 means a dense model (no MoE)."""

    moe_type: Literal["deepspeed", "megablocks"] = "megablocks"
    """Which MoE implementation to use."""

    moe_top_k: int = 1
    """How many experts each token is routed to."""

    moe_router_type: Literal["sinkhorn", "topk"] = "sinkhorn"
    """Token-to-expert routing algorithm."""

    moe_glu: bool = False
    """Use gated (GLU) MLPs as experts."""

    use_tutel: bool = False
    """Use Tutel's MoE kernels."""

    moe_lbl_in_fp32: bool = False
    """Compute the MoE load-balancing loss in fp32."""

    moe_jitter_eps: float | None = None
    """Multiplicative jitter noise on router inputs during training; None disables it."""

    moe_use_residual: bool = True
    """DeepSpeed MoE: use the residual-MoE variant (dense MLP plus experts)."""

    moe_loss_coeff: float = 0.1
    """Weight of the MoE auxiliary (load-balancing) loss in the total loss."""

    moe_train_capacity_factor: float = 1.0
    """DeepSpeed MoE: expert capacity factor during training."""

    moe_eval_capacity_factor: float = 1.0
    """DeepSpeed MoE: expert capacity factor during evaluation."""

    moe_min_capacity: int = 4
    """DeepSpeed MoE: minimum number of tokens each expert can take."""

    moe_token_dropping: bool = False
    """DeepSpeed MoE: drop tokens that overflow an expert's capacity."""

    create_moe_param_group: bool = True
    """DeepSpeed MoE: put expert parameters in their own optimizer parameter group."""

    moe_expert_parallel_size: int = 1
    """Number of ranks the experts are spread over."""

    enable_expert_tensor_parallelism: bool = False
    """Also split each expert's weights over the tensor-parallel group."""
