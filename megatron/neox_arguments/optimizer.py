"""Optimizer group: optimizer choice and ZeRO shorthands (the full dict is `optimizer`)."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class OptimizerArgs:
    """Optimizer selection; the hyper-parameters themselves live in the `optimizer` dict."""

    optimizer_type: Literal[
        "adam", "onebitadam", "cpu_adam", "cpu_torch_adam", "sm3", "madgrad_wd", "sgd", "lion"
    ] = "adam"
    """Derived from optimizer.type when that dict is given; which optimizer to build."""

    use_bnb_optimizer: bool = False
    """Use the bitsandbytes 8-bit version of the optimizer."""

    zero_stage: int | list[int] | Literal["all"] | None = None
    """Derived from zero_optimization.stage: the ZeRO stage in use."""

    zero_reduce_scatter: bool | None = None
    """Derived from zero_optimization: average gradients with reduce-scatter."""

    zero_contiguous_gradients: bool | None = None
    """Derived from zero_optimization: copy gradients into one buffer as they are produced."""

    zero_reduce_bucket_size: int | None = None
    """Derived from zero_optimization: elements reduced at a time."""

    zero_allgather_bucket_size: int | None = None
    """Derived from zero_optimization: elements all-gathered at a time."""

    lr: float | None = None
    """Peak learning rate; derived from optimizer.params.lr when not given."""
