"""Hostfile parsing, include/exclude filters, and Resources.detect."""

from __future__ import annotations

import pytest

from megatron.neox_arguments import ConfigError, Resources
from megatron.neox_arguments.resources import filter_hosts, parse_host_filter, parse_hostfile

HOSTFILE = """# cluster
worker-0 slots=8
worker-1 slots=8

worker-2 slots=4   # smaller node
"""


def test_parse_hostfile():
    assert parse_hostfile(HOSTFILE) == {"worker-0": 8, "worker-1": 8, "worker-2": 4}


def test_bad_hostfile_line_names_line():
    with pytest.raises(ConfigError, match="hf:2: hostfile='worker-1 8'"):
        parse_hostfile("worker-0 slots=8\nworker-1 8\n", "hf")


def test_parse_host_filter():
    assert parse_host_filter("worker-0@worker-1:0,2") == {"worker-0": None, "worker-1": [0, 2]}


@pytest.mark.parametrize("include,exclude,expected", [
    (None, None, {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}),
    ("a", None, {"a": [0, 1, 2, 3]}),
    ("a:1,3@b", None, {"a": [1, 3], "b": [0, 1, 2, 3]}),
    (None, "b", {"a": [0, 1, 2, 3]}),
    (None, "a:0@b:0,1,2,3", {"a": [1, 2, 3]}),
])
def test_filter_hosts(include, exclude, expected):
    assert filter_hosts({"a": 4, "b": 4}, include, exclude) == expected


def test_detect_from_hostfile(tmp_path, monkeypatch):
    path = tmp_path / "hostfile"
    path.write_text(HOSTFILE)
    monkeypatch.setattr("megatron.neox_arguments.resources._probe_cuda", lambda: (True, 8))
    assert Resources.detect({"hostfile": str(path)}) == Resources(3, 4, True)
    assert Resources.detect({"hostfile": str(path), "num_nodes": 2}) == Resources(2, 8, True)
    assert Resources.detect({"hostfile": str(path), "exclude": "worker-2",
                             "num_gpus": 2}) == Resources(2, 2, True)


def test_detect_hostfile_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "hf"
    path.write_text("n0 slots=2\nn1 slots=2\n")
    monkeypatch.setenv("DLTS_HOSTFILE", str(path))
    monkeypatch.setattr("megatron.neox_arguments.resources._probe_cuda", lambda: (False, 0))
    assert Resources.detect({}) == Resources(2, 2, False)


def test_detect_without_cuda_uses_num_gpus_or_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DLTS_HOSTFILE", str(tmp_path / "absent"))
    monkeypatch.setattr("megatron.neox_arguments.resources._probe_cuda", lambda: (False, 0))
    assert Resources.detect({}) == Resources(1, 1, False)
    assert Resources.detect({"num_gpus": 2}) == Resources(1, 2, False)


def test_detect_local_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("DLTS_HOSTFILE", str(tmp_path / "absent"))
    monkeypatch.setattr("megatron.neox_arguments.resources._probe_cuda", lambda: (True, 4))
    assert Resources.detect({}) == Resources(1, 4, True)
    assert Resources.detect({"num_gpus": 1}) == Resources(1, 1, True)


def test_detect_reads_attributes_too(tmp_path, monkeypatch):
    monkeypatch.setenv("DLTS_HOSTFILE", str(tmp_path / "absent"))
    monkeypatch.setattr("megatron.neox_arguments.resources._probe_cuda", lambda: (False, 0))

    class Runner:
        num_gpus = 3
        hostfile = None

    assert Resources.detect(Runner()) == Resources(1, 3, False)
