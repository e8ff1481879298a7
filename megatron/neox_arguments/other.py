"""Other group: backend, seed, launcher-filled values and legacy switches."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class OtherArgs:
    """Keys that belong to no other group."""

    distributed_backend: Literal["nccl", "gloo", "mpi", "ccl", "hccl"] = "nccl"
    """torch.distributed backend; without CUDA nccl is replaced by gloo."""

    distributed_timeout_minutes: float = 10.0
    """Collective timeout; a rank that stops answering fails the others after this long."""

    local_rank: int | None = None
    """Rank on this node; given by the launcher."""

    rank: int | None = None
    """Global rank; given by the launcher."""

    lazy_mpu_init: bool = False
    """Let an external manager finish distributed initialisation."""

    short_seq_prob: float = 0.1
    """Probability of producing a shorter sample (unused by GPT datasets)."""

    eod_mask_loss: bool = False
    """Do not train on predicting end-of-document tokens."""

    adlr_autoresume: bool = False
    """Check the ADLR cluster's auto-resume signal."""

    adlr_autoresume_interval: int = 1000
    """Iterations between auto-resume checks."""

    seed: int = 1234
    """Seed for Python, NumPy and torch random numbers."""

    onnx_safe: bool = False
    """Avoid operations the ONNX exporter cannot handle."""

    deepscale: bool = False
    """Deprecated DeepSpeed flag; has no effect."""

    deepscale_config: str | None = None
    """Deprecated DeepSpeed config path; has no effect."""

    deepspeed_mpi: bool = False
    """Discover ranks from MPI environment variables."""

    deepspeed_slurm: bool = False
    """Discover ranks from SLURM environment variables."""

    user_script: str | None = None
    """Script the launcher runs on each worker (set by deepy.py)."""

    iteration: int | None = None
    """Checkpoint iteration to load; None loads the latest."""

    do_train: bool | None = None
    """Run state kept for GPT-NeoX compatibility; not read by this trainer."""

    do_valid: bool | None = None
    """Run state kept for GPT-NeoX compatibility; not read by this trainer."""

    do_test: bool | None = None
    """Run state kept for GPT-NeoX compatibility; not read by this trainer."""

    save_iters: list[int] | None = None
    """Run state kept for GPT-NeoX compatibility; not read by this trainer."""

    global_num_gpus: int | None = None
    """Derived: total worker processes (nodes x GPUs per node)."""
