"""One field of ``/proc/cpuinfo``: what CPU-specific code paths are chosen and keyed by."""

from __future__ import annotations


def cpuinfo_field(name: str) -> str:
    """The value of the first ``name`` line of ``/proc/cpuinfo`` (``vendor_id``, ``flags``,
    ...), or ``""`` where there is no such file or line."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""
