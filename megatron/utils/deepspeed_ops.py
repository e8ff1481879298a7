"""Keep DeepSpeed from JIT-compiling a C++ op that training never uses.

On a CPU machine DeepSpeed's communication backend compiles a shared-memory all-reduce op
(`deepspeed_shm_comm`) the first time any process starts, one to three minutes of g++,
and only its *inference* all-reduce ever calls it. Marking the op incompatible before the
backend starts makes DeepSpeed fall back to torch.distributed, which is what training
uses anyway.
"""

from __future__ import annotations

SHM_COMM_OP = "deepspeed_shm_comm"


def skip_unused_cpu_ops() -> None:
    """Mark DeepSpeed's shared-memory comm op as unavailable in this process (idempotent)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
