"""Logging group: console interval, TensorBoard, Weights & Biases, Comet, profiling."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class LoggingArgs:
    """Where and how often metrics are written."""

    use_wandb: bool | None = None
    """Log to Weights & Biases."""

    wandb_group: str | None = None
    """W&B group that ties runs together."""

    wandb_team: str | None = None
    """W&B team (entity)."""

    wandb_project: str = "neox"
    """W&B project name."""

    wandb_host: str = "https://api.wandb.ai"
    """W&B server URL."""

    wandb_init_all_ranks: bool = False
    """Start W&B on every rank, not just rank 0."""

    wandb_run_name: str | None = None
    """W&B run name; None lets W&B choose."""

    git_hash: str | None = None
    """Commit of the code that ran; recorded for reproducibility."""

    peak_theoretical_tflops: float | None = None
    """Peak TFLOPS of one device, to report model FLOPs utilisation; None skips MFU."""

    log_dir: str | None = None
    """Folder for text logs."""

    tensorboard_dir: str | None = None
    """Folder for TensorBoard event files; None disables TensorBoard."""

    use_comet: bool | None = None
    """Log to Comet."""

    comet_workspace: str | None = None
    """Comet workspace."""

    comet_project: str | None = None
    """Comet project."""

    comet_experiment_name: str | None = None
    """Comet experiment name."""

    comet_tags: list[str] | None = None
    """Comet experiment tags."""

    comet_others: dict[str, Any] | None = None
    """Extra keyword arguments for the Comet experiment."""

    log_interval: int = 100
    """Log training metrics every this many iterations."""

    log_grad_pct_zeros: bool = False
    """Log the fraction of zero gradient entries per parameter."""

    log_param_norm: bool = False
    """Log the norm of each parameter."""

    log_grad_norm: bool = False
    """Log the norm of each parameter's gradient."""

    log_optimizer_states: bool = False
    """Log the norm of each optimizer state tensor."""

    log_gradient_noise_scale: bool = False
    """Estimate and log the gradient noise scale."""

    gradient_noise_scale_n_batches: int = 5
    """Batches accumulated per gradient noise scale estimate."""

    gradient_noise_scale_cpu_offload: bool = False
    """Keep the gradient noise scale buffers on the CPU."""

    memory_profiling: bool = False
    """Record CUDA memory snapshots."""

    memory_profiling_path: str | None = None
    """Where memory snapshots are written."""

    profile: bool = False
    """Run the PyTorch profiler between profile_step_start and profile_step_stop."""

    profile_step_start: int = 10
    """First profiled iteration."""

    profile_step_stop: int = 12
    """Last profiled iteration."""
