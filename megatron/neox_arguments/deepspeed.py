"""DeepSpeed group: keys that are passed through to DeepSpeed's config dict."""

from dataclasses import dataclass, field
from typing import Any

# Fields of this group that DeepSpeed does not know; they never reach the DeepSpeed dict.
_NEOX_ONLY = {"neox_only": True}


@dataclass(frozen=True, kw_only=True)
class DeepSpeedArgs:
    """DeepSpeed config keys, named as DeepSpeed names them; see `deepspeed_dict.py`."""

    deepspeed: bool = field(default=True, metadata=_NEOX_ONLY)
    """Always True: training runs through the DeepSpeed engine."""

    train_batch_size: int | None = None
    """Samples per optimizer step over all data-parallel ranks (derived from the other two)."""

    train_micro_batch_size_per_gpu: int | None = None
    """Samples per forward pass on one rank (derived from the other two)."""

    gradient_accumulation_steps: int | None = None
    """Micro batches per optimizer step (derived; 1 when nothing else decides it)."""

    optimizer: dict[str, Any] | None = None
    """Optimizer as {'type': ..., 'params': {...}}; params.lr gives `lr`."""

    scheduler: dict[str, Any] | None = None
    """DeepSpeed LR scheduler dict; usually unset because the trainer owns the schedule."""

    fp32_allreduce: bool = field(default=False, metadata=_NEOX_ONLY)
    """All-reduce gradients in fp32."""

    prescale_gradients: bool = False
    """Divide gradients by the data-parallel size before the all-reduce."""

    gradient_predivide_factor: float = 1.0
    """Divide gradients by this before the all-reduce and the rest after."""

    sparse_gradients: bool = False
    """Reduce embedding gradients as sparse tensors."""

    fp16: dict[str, Any] | None = None
    """DeepSpeed fp16 settings; enabled: true selects fp16 precision."""

    bf16: dict[str, Any] | None = None
    """DeepSpeed bf16 settings; enabled: true selects bf16 precision."""

    amp: dict[str, Any] | None = None
    """NVIDIA Apex AMP settings."""

    gradient_clipping: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping)."""

    zero_optimization: dict[str, Any] | None = None
    """ZeRO settings; derived to GPT-NeoX's defaults (stage 0) when not given."""

    curriculum_learning: dict[str, Any] | None = None
    """DeepSpeed curriculum learning settings."""

    curriculum_seqlen: int = field(default=0, metadata=_NEOX_ONLY)
    """Current curriculum sequence length (run state)."""

    steps_per_print: int = 10
    """DeepSpeed prints its own progress every this many steps."""

    wall_clock_breakdown: bool = False
    """DeepSpeed times forward, backward and step separately."""

    dump_state: bool = False
    """DeepSpeed prints its state after initialisation."""

    flops_profiler: dict[str, Any] | None = None
    """DeepSpeed flops profiler settings."""

    communication_data_type: str | None = None
    """Data type used for gradient communication."""

    autotuning: dict[str, Any] | None = None
    """DeepSpeed autotuning settings."""

    activation_checkpointing: dict[str, Any] | None = None
    """DeepSpeed activation checkpointing settings."""

    sparse_attention: dict[str, Any] | None = None
    """DeepSpeed sparse attention settings."""

    data_efficiency: dict[str, Any] | None = None
    """DeepSpeed data efficiency (sampling and routing) settings."""

    tensorboard: dict[str, Any] | None = None
    """DeepSpeed's own TensorBoard monitor."""

    wandb: dict[str, Any] | None = None
    """DeepSpeed's own W&B monitor."""

    csv_monitor: dict[str, Any] | None = None
    """DeepSpeed's own CSV monitor."""

    elasticity: dict[str, Any] | None = None
    """DeepSpeed elastic training settings."""

    comms_logger: dict[str, Any] | None = None
    """DeepSpeed communication logger settings."""

    compression_training: dict[str, Any] | None = None
    """DeepSpeed compression training settings."""

    checkpoint: dict[str, Any] | None = None
    """DeepSpeed checkpoint settings."""

    data_types: dict[str, Any] | None = None
    """DeepSpeed data type settings (e.g. grad_accum_dtype)."""

    deepspeed_extra_args: dict[str, Any] | None = field(default=None, metadata=_NEOX_ONLY)
    """Extra keys merged on top of the DeepSpeed dict, for DeepSpeed options without a key here."""

    load_universal: bool = field(default=False, metadata=_NEOX_ONLY)
    """The checkpoint under `load` is a DeepSpeed universal checkpoint (any parallel layout)."""
