"""Hostfiles, include/exclude filters and SLURM host lists, as DeepSpeed's runner reads them.

The config needs the number of GPUs a launch will use before any process starts, so these
rules are implemented here in pure Python (DeepSpeed's own copies live in a module that
imports torch). The semantics follow ``deepspeed.launcher.runner`` 0.19 exactly; the tests
check both against each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from megatron.launch.errors import LaunchError

_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")


def parse_hostfile(text: str, source: str = "<hostfile>") -> dict[str, int]:
    """Read MPI-style ``NAME slots=N`` lines into an ordered ``{host: slots}`` dict.

    Host order is kept because DeepSpeed numbers node ranks in file order.

    Args:
        text: the hostfile contents.
        source: file name used in error messages.

    Raises:
        LaunchError: on a malformed line, a repeated host, or a file without hosts.
    """
    pool: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _HOST_LINE.search(line)
        if match is None:
            raise LaunchError(
                f"{source}:{lineno}: bad hostfile line {line!r}; expected 'HOSTNAME slots=N'"
            )
        host, slots = match.group(1), int(match.group(2))
        if host in pool:
            raise LaunchError(f"{source}:{lineno}: host {host!r} is listed twice")
        pool[host] = slots
    if not pool:
        raise LaunchError(f"{source}: no hosts found; expected lines like 'worker-0 slots=8'")
    return pool


def read_hostfile(path: str | Path) -> dict[str, int]:
    """Parse the hostfile at ``path`` (see :func:`parse_hostfile`).

    Raises:
        LaunchError: when the file is missing or malformed.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise LaunchError(f"hostfile {str(path)!r} cannot be read: {err.strerror}") from err
    return parse_hostfile(text, source=str(path))


def _parse_node_specs(spec: str, key: str) -> dict[str, list[int]]:
    """Split ``NAME[:SLOT[,SLOT...]][@NAME...]`` into ``{host: sorted unique slots}``."""
    nodes: dict[str, list[int]] = {}
    for node in spec.split("@"):
        host, _, slot_text = node.partition(":")
        try:
            slots = [int(s) for s in slot_text.split(",")] if slot_text else []
        except ValueError as err:
            raise LaunchError(
                f"{key}: bad slot list in {node!r}; expected NAME[:SLOT[,SLOT...]]"
            ) from err
        nodes[host] = sorted(set(nodes.get(host, []) + slots))
    return nodes


def filter_resources(
    pool: Mapping[str, int], include: str | None = None, exclude: str | None = None
) -> dict[str, list[int]]:
    """Apply an ``include`` or ``exclude`` filter to a hostfile pool.

    Args:
        pool: ``{host: slots}`` from :func:`parse_hostfile`.
        include: ``NODE_SPEC[@NODE_SPEC...]`` to keep (a bare host keeps all its slots).
        exclude: same syntax, naming what to drop.

    Returns:
        ``{host: [slot ids]}`` in hostfile order, hosts left with no slots removed.

    Raises:
        LaunchError: when both filters are given, or one names an unknown host or slot.
    """
    include, exclude = include or "", exclude or ""
    if include and exclude:
        raise LaunchError("include and exclude were both set; they are mutually exclusive")
    available = {host: list(range(n)) for host, n in pool.items()}
    if not include and not exclude:
        return available
    key = "include" if include else "exclude"
    chosen: dict[str, list[int]] = {} if include else {h: list(s) for h, s in available.items()}
    for host, slots in _parse_node_specs(include or exclude, key).items():
        if host not in available:
            raise LaunchError(f"{key}: host {host!r} is not in the hostfile {list(available)}")
        for slot in slots:
            if slot not in available[host]:
                raise LaunchError(
                    f"{key}: host {host!r} has no slot {slot} (it has {available[host]})"
                )
        if include:
            chosen[host] = slots or available[host]
        else:
            chosen[host] = [s for s in chosen[host] if slots and s not in slots]
    return {host: chosen[host] for host in available if chosen.get(host)}


def trim_resources(
    resources: Mapping[str, list[int]], num_nodes: int | None = -1, num_gpus: int | None = -1
) -> dict[str, list[int]]:
    """Keep the first ``num_nodes`` hosts and slots ``0..num_gpus-1`` on each, as DeepSpeed does.

    A value of None, -1 (or any value below 1) means "all".
    """
    hosts = list(resources)
    if num_nodes is not None and num_nodes > 0:
        hosts = hosts[:num_nodes]
    if num_gpus is not None and num_gpus > 0:
        return {host: list(range(num_gpus)) for host in hosts}
    return {host: list(resources[host]) for host in hosts}


def hostfile_resources(
    path: str | Path,
    include: str | None = None,
    exclude: str | None = None,
    num_nodes: int | None = -1,
    num_gpus: int | None = -1,
) -> dict[str, list[int]]:
    """The ``{host: [slot ids]}`` a launch with these runner settings will use.

    ``len`` of the values summed is the global GPU count the config derives batch sizes from.
    """
    return trim_resources(
        filter_resources(read_hostfile(path), include, exclude), num_nodes, num_gpus
    )


_BRACKET = re.compile(r"\[([^\]]*)\]")


def _expand_ranges(body: str, hostlist: str) -> list[str]:
    """Expand ``01-03,07`` into ``['01', '02', '03', '07']``, keeping zero padding."""
    out: list[str] = []
    for part in body.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise LaunchError(f"SLURM host list {hostlist!r}: bad range {part!r}")
        if not sep:
            out.append(lo)
            continue
        width = len(lo)
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def _split_top_level(hostlist: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(hostlist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(hostlist[start:i])
            start = i + 1
    items.append(hostlist[start:])
    return [item for item in items if item]


def expand_slurm_hostlist(hostlist: str) -> list[str]:
    """Expand a compressed SLURM host list (``SLURM_JOB_NODELIST``) into host names.

    ``"gpu[01-02,07],login"`` becomes ``["gpu01", "gpu02", "gpu07", "login"]``; several
    bracket groups in one name (``"r[1-2]n[1-2]"``) expand as a product, as ``scontrol show
    hostnames`` does.

    Raises:
        LaunchError: on an unbalanced bracket or a bad range.
    """
    hosts: list[str] = []
    for item in _split_top_level(hostlist.strip()):
        if item.count("[") != item.count("]"):
            raise LaunchError(f"SLURM host list {hostlist!r}: unbalanced brackets in {item!r}")
        match = _BRACKET.search(item)
        if match is None:
            hosts.append(item)
            continue
        head, tail = item[: match.start()], item[match.end() :]
        for middle in _expand_ranges(match.group(1), hostlist):
            hosts.extend(expand_slurm_hostlist(head + middle + tail))
    return hosts
