"""Multi-node launch: DeepSpeed runner argv, hostfiles, worker environment and ranks.

Pure Python: nothing here imports torch or DeepSpeed, so ``deepy.py`` can check launch
settings before it loads either. Typical use in ``deepy.py``::

    argv = runner_argv(args, "train.py", worker_args)
    os.environ.update(thread_env(os.environ, workers_per_node))  # cores shared (threads.py)
    os.environ.update(choose_allocator(os.environ).env)  # jemalloc or tuned glibc (allocator.py)
    export_env(deepspeed.launcher.runner.EXPORT_ENVS, worker_exports(os.environ))
    deepspeed.launcher.runner.main(argv)

and in each worker, before ``deepspeed.init_distributed()``::

    os.environ.update(distributed_env(os.environ, master_addr=args.master_addr,
                                      master_port=args.master_port, hostfile=args.hostfile))
"""

from megatron.launch.allocator import (
    WORKER_MALLOC_TUNABLES,
    AllocatorChoice,
    allocator_env,
    choose_allocator,
)
from megatron.launch.errors import LaunchError
from megatron.launch.exports import (
    WORKER_ENV_PREFIXES,
    export_env,
    redact,
    worker_exports,
    write_deepspeed_env,
)
from megatron.launch.hostfile import (
    expand_slurm_hostlist,
    filter_resources,
    hostfile_resources,
    parse_hostfile,
    read_hostfile,
    trim_resources,
)
from megatron.launch.launchers import LAUNCHERS, Launcher, get_launcher
from megatron.launch.ranks import RANK_SCHEMES, distributed_env, rank_scheme, worker_env_rank
from megatron.launch.runner import LaunchSettings, runner_argv, settings_argv
from megatron.launch.threads import thread_env

__all__ = [
    "LAUNCHERS",
    "RANK_SCHEMES",
    "WORKER_ENV_PREFIXES",
    "WORKER_MALLOC_TUNABLES",
    "AllocatorChoice",
    "LaunchError",
    "LaunchSettings",
    "Launcher",
    "allocator_env",
    "choose_allocator",
    "distributed_env",
    "expand_slurm_hostlist",
    "export_env",
    "filter_resources",
    "get_launcher",
    "hostfile_resources",
    "parse_hostfile",
    "rank_scheme",
    "read_hostfile",
    "redact",
    "runner_argv",
    "settings_argv",
    "thread_env",
    "trim_resources",
    "worker_env_rank",
    "worker_exports",
    "write_deepspeed_env",
]
