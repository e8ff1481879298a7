"""A worker script for the launch tests: rendezvous from the launcher's variables, all-reduce.

Run as ``python rank_worker.py [--local_rank=N] OUT_DIR``; each rank writes
``OUT_DIR/rank<R>.txt`` holding ``rank local_rank world_size allreduced_sum``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megatron.launch import distributed_env


def main() -> int:
    # deepspeed.launcher.launch puts --local_rank=N before the script's own arguments.
    out = Path([arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")][0])
    os.environ.update(distributed_env(os.environ, master_port=None))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    local = os.environ["LOCAL_RANK"]
    (out / f"rank{rank}.txt").write_text(f"{rank} {local} {world} {value.item():g}\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
