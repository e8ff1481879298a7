"""Small shared helpers: rank-aware logging, timers, throughput arithmetic, noise scale.

Only the torch-free helpers are re-exported here, so importing ``megatron.utils`` stays cheap
for the config layer; import ``megatron.utils.throughput`` for the torch-based GEMM probe.
"""

from megatron.utils.logging import configure_logging, get_logger
from megatron.utils.noise_scale import NoiseScaleEstimate, NoiseScaleTracker, estimate_noise_scale
from megatron.utils.timers import Timer, TimerError, Timers

__all__ = [
    "NoiseScaleEstimate",
    "NoiseScaleTracker",
    "Timer",
    "TimerError",
    "Timers",
    "configure_logging",
    "estimate_noise_scale",
    "get_logger",
]
