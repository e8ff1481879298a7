"""What each DeepSpeed multi-node launcher backend needs, one registry entry per backend.

DeepSpeed 0.19's runner (``deepspeed.launcher.runner``) knows these backends: pdsh (its
default; ssh to every host and start ``deepspeed.launcher.launch`` there), openmpi, mvapich,
mpich and impi (one ``mpirun`` that starts every rank), and slurm (one ``srun``). Adding a
backend here is one ``Launcher`` value; nothing else switches on the name.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.launch.errors import LaunchError


@dataclass(frozen=True)
class Launcher:
    """Facts about one DeepSpeed launcher backend that decide which runner flags are valid.

    Attributes:
        name: the value of the ``launcher`` key and of DeepSpeed's ``--launcher``.
        starts_ranks: True when the backend starts every rank itself (MPI, srun) rather than
            one ``deepspeed.launcher.launch`` per node; workers then read their rank from the
            scheduler's variables (see ``megatron.launch.ranks``).
        filters_hosts: whether DeepSpeed lets this backend use include/exclude/num_nodes/num_gpus.
        uses_ssh: whether the backend reaches hosts over ssh, so DeepSpeed's ssh probe is useful.
        scheduler_flags: whether ``comment``/``account`` mean something (they become ``srun``
            options through ``--launcher_args``).
    """

    name: str
    starts_ranks: bool
    filters_hosts: bool
    uses_ssh: bool
    scheduler_flags: bool = False


LAUNCHERS: dict[str, Launcher] = {
    launcher.name: launcher
    for launcher in (
        Launcher("pdsh", starts_ranks=False, filters_hosts=True, uses_ssh=True),
        Launcher("openmpi", starts_ranks=True, filters_hosts=False, uses_ssh=True),
        Launcher("mvapich", starts_ranks=True, filters_hosts=False, uses_ssh=True),
        Launcher("mpich", starts_ranks=True, filters_hosts=False, uses_ssh=True),
        Launcher("impi", starts_ranks=True, filters_hosts=False, uses_ssh=True),
        Launcher(
            "slurm", starts_ranks=True, filters_hosts=True, uses_ssh=False, scheduler_flags=True
        ),
    )
}

MPI_LAUNCHERS = frozenset(name for name in LAUNCHERS if name not in ("pdsh", "slurm"))


def get_launcher(name: str) -> Launcher:
    """Look up a backend by name, case-insensitively (GPT-NeoX accepts ``OpenMPI``).

    Raises:
        LaunchError: naming the value and the valid choices.
    """
    launcher = LAUNCHERS.get(name.lower())
    if launcher is None:
        raise LaunchError(
            f"launcher: unknown value {name!r}; expected one of {sorted(LAUNCHERS)} "
            "(the backends DeepSpeed 0.19's runner supports)"
        )
    return launcher
