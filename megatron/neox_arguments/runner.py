"""Runner group: where and how the DeepSpeed launcher starts the worker processes."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class RunnerArgs:
    """Launcher settings; they pick the machines and processes, never the model."""

    hostfile: str | None = None
    """File listing `host slots=N` lines; default /job/hostfile or $DLTS_HOSTFILE."""

    include: str | None = None
    """Use only these hosts/slots, e.g. 'worker-0@worker-1:0,2'."""

    exclude: str | None = None
    """Leave out these hosts/slots, same format as include."""

    num_nodes: int = -1
    """Number of nodes to use; -1 uses every node in the hostfile."""

    num_gpus: int | None = None
    """GPUs (worker processes) per node; None uses all that are found."""

    master_port: int = 29500
    """Port of the rank-0 rendezvous."""

    master_addr: str | None = None
    """Address of the rank-0 rendezvous; None lets the launcher choose."""

    launcher: Literal["pdsh", "openmpi", "mvapich", "slurm", "mosaicml", "jsrun"] = "pdsh"
    """Multi-node launcher backend."""

    force_multi: bool = False
    """Use the multi-node launcher even on one node."""

    detect_nvlink_pairs: bool = False
    """Restrict GPU visibility to NVLink pairs (slurm launcher)."""

    autotuning_run: str | None = None
    """Run DeepSpeed autotuning ('tune' or 'run') instead of training."""

    no_ssh_check: bool = False
    """Skip the launcher's passwordless-ssh check."""

    comment: str | None = None
    """Job comment passed to the slurm launcher."""

    account: str | None = None
    """Account passed to the slurm launcher."""

    no_ssh: bool = False
    """Start only this node's workers, without ssh (DeepSpeed --no_ssh); run once per node."""

    node_rank: int | None = None
    """This node's index in the hostfile (0 = first host); required with no_ssh."""
