"""Turn the runner keys of a config into the argv of ``deepspeed.launcher.runner.main``.

``deepy.py`` is the only caller: it validates the config, then hands DeepSpeed's runner
``runner_argv(args, "train.py", worker_args)``. The config is read duck-typed (plain
attributes with GPT-NeoX's key names), so this module imports nothing from ``megatron``
outside this package and never imports torch or DeepSpeed.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from megatron.launch.errors import LaunchError
from megatron.launch.hostfile import expand_slurm_hostlist
from megatron.launch.launchers import MPI_LAUNCHERS, get_launcher

logger = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True, kw_only=True)
class LaunchSettings:
    """The runner keys of a config, with GPT-NeoX's names and defaults.

    ``no_ssh``, ``node_rank``, ``ssh_port`` and ``launcher_args`` are DeepSpeed runner options
    that GPT-NeoX has no key for; they are read when the config object has them.
    """

    hostfile: str | None = None
    include: str | None = None
    exclude: str | None = None
    num_nodes: int | None = -1
    num_gpus: int | None = None
    master_port: int | None = DEFAULT_MASTER_PORT
    master_addr: str | None = None
    launcher: str | None = "pdsh"
    launcher_args: str | None = None
    force_multi: bool = False
    no_ssh_check: bool = False
    no_ssh: bool = False
    node_rank: int | None = None
    ssh_port: int | None = None
    comment: str | None = None
    account: str | None = None
    detect_nvlink_pairs: bool = False
    autotuning_run: str | None = None
    deepspeed_slurm: bool = False
    deepspeed_mpi: bool = False

    @classmethod
    def from_args(cls, args: Any, environ: Mapping[str, str] | None = None) -> LaunchSettings:
        """Read the runner keys from a config object, filling gaps from the environment.

        Values the config sets always win. When unset: ``DLTS_HOSTFILE`` names the hostfile
        (as in GPT-NeoX), ``MASTER_ADDR`` gives the master address, and under the slurm
        launcher the first host of ``SLURM_JOB_NODELIST`` does, which spares DeepSpeed its ssh
        probe for ``hostname -I``.
        """
        env = os.environ if environ is None else environ
        values = {f.name: getattr(args, f.name, f.default) for f in fields(cls)}
        if values["hostfile"] is None and env.get("DLTS_HOSTFILE"):
            values["hostfile"] = env["DLTS_HOSTFILE"]
        if values["master_addr"] is None:
            values["master_addr"] = _master_addr_from_env(values["launcher"], env)
        return cls(**values)

    def problems(self) -> list[str]:
        """Every reason these settings cannot be launched (empty when they can)."""
        found: list[str] = []
        for check in _CHECKS:
            found.extend(check(self))
        return found


def _master_addr_from_env(launcher: str | None, env: Mapping[str, str]) -> str | None:
    """``MASTER_ADDR``, else the first SLURM host under the slurm launcher, else None."""
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if (launcher or "").lower() == "slurm" and nodelist:
        return expand_slurm_hostlist(nodelist)[0]
    return None


def _check_launcher(s: LaunchSettings) -> list[str]:
    try:
        launcher = get_launcher(s.launcher or "pdsh")
    except LaunchError as err:
        return [str(err)]
    found = []
    if s.deepspeed_slurm and launcher.name != "slurm":
        found.append(f"deepspeed_slurm: true needs launcher: slurm, got {s.launcher!r}")
    if s.deepspeed_mpi and launcher.name not in MPI_LAUNCHERS:
        found.append(
            f"deepspeed_mpi: true needs an MPI launcher {sorted(MPI_LAUNCHERS)}, got {s.launcher!r}"
        )
    for key in ("comment", "account"):
        if getattr(s, key) and not launcher.scheduler_flags:
            found.append(
                f"{key}: only the slurm launcher passes it on, got launcher {s.launcher!r}"
            )
    limited = [k for k in ("include", "exclude") if getattr(s, k)]
    limited += [k for k in ("num_nodes", "num_gpus") if (getattr(s, k) or -1) > 0]
    if limited and not launcher.filters_hosts:
        found.append(
            f"{', '.join(limited)}: DeepSpeed's {launcher.name} launcher cannot limit hosts or "
            "GPUs; list exactly the hosts to use in the hostfile instead"
        )
    return found


def _check_resources(s: LaunchSettings) -> list[str]:
    found = []
    if s.include and s.exclude:
        found.append("include and exclude are both set; DeepSpeed accepts only one of them")
    if (s.include or s.exclude) and (s.num_nodes or -1) > 0:
        found.append(f"num_nodes: {s.num_nodes} cannot be combined with include/exclude")
    for key in ("num_nodes", "num_gpus"):
        value = getattr(s, key)
        if value is not None and value != -1 and value < 1:
            found.append(f"{key}: expected a positive count or -1 (all), got {value}")
    return found


def _check_ports_and_flags(s: LaunchSettings) -> list[str]:
    found = []
    for key in ("master_port", "ssh_port"):
        port = getattr(s, key)
        if port is not None and not 0 < port < 65536:
            found.append(f"{key}: expected a TCP port in 1..65535, got {port}")
    if s.no_ssh and (s.node_rank is None or s.node_rank < 0):
        found.append("no_ssh: true needs node_rank (this node's index, 0 for the first host)")
    if s.node_rank is not None and not s.no_ssh:
        found.append(f"node_rank: {s.node_rank} is only used together with no_ssh: true")
    if s.detect_nvlink_pairs:
        found.append(
            "detect_nvlink_pairs: a DeeperSpeed-only feature that DeepSpeed 0.19's runner lacks; "
            "remove it (order the GPUs with CUDA_VISIBLE_DEVICES instead)"
        )
    if s.autotuning_run not in (None, "tune", "run"):
        found.append(f"autotuning_run: expected 'tune', 'run' or null, got {s.autotuning_run!r}")
    return found


_CHECKS = (_check_launcher, _check_resources, _check_ports_and_flags)


def _resource_flags(s: LaunchSettings) -> list[str]:
    argv: list[str] = []
    for key in ("hostfile", "include", "exclude"):
        if getattr(s, key):
            argv += [f"--{key}", str(getattr(s, key))]
    if (s.num_nodes or -1) > 0:
        argv += ["--num_nodes", str(s.num_nodes)]
    if (s.num_gpus or -1) > 0:
        if s.include or s.exclude:
            # GPT-NeoX's rule: the filter wins; DeepSpeed would refuse the pair outright.
            logger.warning("num_gpus: %s ignored because include/exclude is set", s.num_gpus)
        else:
            argv += ["--num_gpus", str(s.num_gpus)]
    return argv


def _launcher_flags(s: LaunchSettings) -> list[str]:
    launcher = get_launcher(s.launcher or "pdsh")
    argv = ["--launcher", launcher.name]
    extra = shlex.split(s.launcher_args or "")
    for key in ("comment", "account"):
        if getattr(s, key):
            extra += [f"--{key}", str(getattr(s, key))]
    if extra:
        argv += ["--launcher_args", shlex.join(extra)]
    if s.force_multi or s.deepspeed_slurm or s.deepspeed_mpi:
        argv.append("--force_multi")
    if s.no_ssh_check or not launcher.uses_ssh:
        argv.append("--no_ssh_check")
    if s.no_ssh:
        argv += ["--no_ssh", "--node_rank", str(s.node_rank)]
    if s.ssh_port is not None:
        argv += ["--ssh_port", str(s.ssh_port)]
    return argv


def settings_argv(settings: LaunchSettings) -> list[str]:
    """The runner options (everything before the user script) for valid settings.

    Raises:
        LaunchError: listing every problem at once.
    """
    found = settings.problems()
    if found:
        raise LaunchError("cannot launch:\n  " + "\n  ".join(found))
    argv = ["--autotuning", settings.autotuning_run] if settings.autotuning_run else []
    argv += _resource_flags(settings)
    if settings.master_port is not None:
        argv += ["--master_port", str(settings.master_port)]
    if settings.master_addr:
        argv += ["--master_addr", settings.master_addr]
    return argv + _launcher_flags(settings)


def runner_argv(
    args: Any,
    user_script: str,
    user_argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Build the argv for ``deepspeed.launcher.runner.main(argv)``.

    Args:
        args: any object with GPT-NeoX's runner keys as attributes (``hostfile``,
            ``include``, ``exclude``, ``num_nodes``, ``num_gpus``, ``master_port``,
            ``master_addr``, ``launcher``, ``force_multi``, ``no_ssh_check``, ``comment``,
            ``account``, ``detect_nvlink_pairs``, ``autotuning_run``, ``deepspeed_slurm``,
            ``deepspeed_mpi``; optionally ``launcher_args``, ``no_ssh``, ``node_rank``,
            ``ssh_port``). Missing attributes take GPT-NeoX's defaults.
        user_script: the script every rank runs (``train.py``).
        user_argv: its arguments; they follow the script unchanged.
        environ: the environment for the fallbacks in :meth:`LaunchSettings.from_args`
            (defaults to ``os.environ``).

    Raises:
        LaunchError: when the settings cannot be launched, listing every problem.
    """
    settings = LaunchSettings.from_args(args, environ)
    return settings_argv(settings) + [user_script, *user_argv]
