"""Fields of /proc/cpuinfo, read from a stand-in file."""

from __future__ import annotations

import io

import pytest

from megatron.utils import cpuinfo

TEXT = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 amx_bf16\n" \
       "processor\t: 1\nvendor_id\t: Other\n"


def test_first_matching_line_wins_and_missing_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpuinfo, "open", lambda *a, **k: io.StringIO(TEXT), raising=False)
    assert cpuinfo.cpuinfo_field("vendor_id") == "GenuineIntel"
    assert cpuinfo.cpuinfo_field("flags") == "fpu avx2 amx_bf16"
    assert cpuinfo.cpuinfo_field("vendor") == ""  # a prefix of a key is not the key


def test_no_file_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(cpuinfo, "open", missing, raising=False)
    assert cpuinfo.cpuinfo_field("flags") == ""
