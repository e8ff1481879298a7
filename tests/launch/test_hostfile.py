"""Hostfile parsing, include/exclude filters and SLURM host lists."""

from __future__ import annotations

from pathlib import Path

import deepspeed.launcher.runner as ds_runner
import pytest

from megatron.launch import (
    LaunchError,
    expand_slurm_hostlist,
    filter_resources,
    hostfile_resources,
    parse_hostfile,
    read_hostfile,
    trim_resources,
)

HOSTFILE = """# cluster
worker-0 slots=4

worker-1 slots=4   # trailing comment
worker-2 slots=2
"""
POOL = {"worker-0": 4, "worker-1": 4, "worker-2": 2}


def test_parse_keeps_order_and_skips_comments() -> None:
    pool = parse_hostfile(HOSTFILE)
    assert pool == POOL
    assert list(pool) == ["worker-0", "worker-1", "worker-2"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("worker-0 slots=4\nworker-0 slots=2\n", "h.txt:2: host 'worker-0' is listed twice"),
        ("worker-0 slots=4\nworker-1 4\n", "h.txt:2: bad hostfile line 'worker-1 4'"),
        ("# nothing\n\n", "h.txt: no hosts found"),
    ],
)
def test_parse_errors_name_file_and_line(text: str, fragment: str) -> None:
    with pytest.raises(LaunchError, match=fragment):
        parse_hostfile(text, source="h.txt")


def test_read_missing_hostfile_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="nope.txt"):
        read_hostfile(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ("", "", {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1, 2, 3], "worker-2": [0, 1]}),
        ("worker-2@worker-0:1,3", "", {"worker-0": [1, 3], "worker-2": [0, 1]}),
        ("worker-1:2,0,2", "", {"worker-1": [0, 2]}),
        ("", "worker-1", {"worker-0": [0, 1, 2, 3], "worker-2": [0, 1]}),
        (
            "",
            "worker-0:0,1@worker-2:1",
            {"worker-0": [2, 3], "worker-1": [0, 1, 2, 3], "worker-2": [0]},
        ),  # fmt: skip
        ("", "worker-2:0,1", {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1, 2, 3]}),
    ],
)
def test_filters_match_hand_results_and_deepspeed(
    include: str, exclude: str, expected: dict[str, list[int]]
) -> None:
    ours = filter_resources(POOL, include, exclude)
    assert ours == expected
    assert list(ours) == list(expected)
    theirs = ds_runner.parse_inclusion_exclusion(dict(POOL), include, exclude)
    assert dict(theirs) == ours


@pytest.mark.parametrize(
    ("include", "exclude", "fragment"),
    [
        ("worker-9", "", "include: host 'worker-9' is not in the hostfile"),
        ("worker-2:2", "", r"include: host 'worker-2' has no slot 2 \(it has \[0, 1\]\)"),
        ("", "worker-0:x", "exclude: bad slot list in 'worker-0:x'"),
        ("worker-0", "worker-1", "mutually exclusive"),
    ],
)
def test_filter_errors(include: str, exclude: str, fragment: str) -> None:
    with pytest.raises(LaunchError, match=fragment):
        filter_resources(POOL, include, exclude)


def test_trim_takes_first_nodes_and_low_slots() -> None:
    resources = {"a": [1, 3], "b": [0, 1, 2], "c": [0]}
    assert trim_resources(resources, 2, None) == {"a": [1, 3], "b": [0, 1, 2]}
    assert trim_resources(resources, -1, 2) == {"a": [0, 1], "b": [0, 1], "c": [0, 1]}
    assert trim_resources(resources, 1, 1) == {"a": [0]}
    assert ds_runner.apply_num_nodes_and_gpus(resources, 1, 1) == {"a": [0]}


def test_hostfile_resources_counts_gpus(tmp_path: Path) -> None:
    path = tmp_path / "hostfile"
    path.write_text(HOSTFILE)
    resources = hostfile_resources(path, exclude="worker-0:3", num_nodes=-1)
    assert sum(map(len, resources.values())) == 9
    assert hostfile_resources(path, num_nodes=2, num_gpus=8) == {
        "worker-0": list(range(8)),
        "worker-1": list(range(8)),
    }


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node7", ["node7"]),
        ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("a[8-10],login", ["a8", "a9", "a10", "login"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("x-[009-011]-ib", ["x-009-ib", "x-010-ib", "x-011-ib"]),
    ],
)
def test_expand_slurm_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_slurm_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["gpu[01-03", "gpu[a-b]", "gpu[1-]"])
def test_expand_slurm_hostlist_rejects_garbage(hostlist: str) -> None:
    with pytest.raises(LaunchError, match="SLURM host list"):
        expand_slurm_hostlist(hostlist)
