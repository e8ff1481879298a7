"""tools/fetch_jemalloc.py: the library out of a Debian package, or a note and no failure.

A stand-in ``apt-get`` on ``PATH`` hands over a package built here with ``dpkg-deb -b``, so
the test needs no package lists or mirror; ``dpkg-deb -x`` is the real one.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import fetch_jemalloc  # noqa: E402

LIBRARY = b"\x7fELF not really a library, only its bytes are checked"


def fake_apt_get(bin_dir: Path, deb: Path | None) -> None:
    """An ``apt-get download`` that copies ``deb`` into the working directory (None: fails)."""
    script = bin_dir / "apt-get"
    body = (f'cp "{deb}" "./libjemalloc2_5.3.0-1_amd64.deb"' if deb is not None
            else 'echo "E: Unable to locate package libjemalloc2" >&2; exit 100')
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def build_deb(tmp_path: Path) -> Path:
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: libjemalloc2\nVersion: 5.3.0-1\nArchitecture: amd64\n"
        "Maintainer: test <t@example.org>\nDescription: test package\n")
    lib_dir = tree / "usr" / "lib" / "x86_64-linux-gnu"
    lib_dir.mkdir(parents=True)
    (lib_dir / "libjemalloc.so.2").write_bytes(LIBRARY)
    deb = tmp_path / "built.deb"
    subprocess.run(["dpkg-deb", "-b", str(tree), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the tool puts the library, in a fresh prefix; no system jemalloc."""
    path = tmp_path / "prefix" / "lib" / "libjemalloc.so.2"
    monkeypatch.setattr(fetch_jemalloc, "bundled_jemalloc", lambda: path)
    monkeypatch.setattr(fetch_jemalloc.ctypes.util, "find_library", lambda name: None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    return path


def test_copies_the_library_out_of_the_package(target: Path, tmp_path: Path, capsys) -> None:
    fake_apt_get(tmp_path / "bin", build_deb(tmp_path))
    assert fetch_jemalloc.main() == 0
    assert target.read_bytes() == LIBRARY
    assert not list(target.parent.glob("*.partial"))
    assert str(target) in capsys.readouterr().out
    assert fetch_jemalloc.main() == 0  # a second run finds it and fetches nothing
    assert "there already" in capsys.readouterr().out


def test_without_the_package_it_says_so_and_succeeds(target: Path, tmp_path: Path,
                                                    capsys) -> None:
    fake_apt_get(tmp_path / "bin", None)
    assert fetch_jemalloc.main() == 0
    assert not target.exists()
    out = capsys.readouterr().out
    assert "Unable to locate package libjemalloc2" in out and "glibc" in out


def test_a_system_jemalloc_is_used_as_it_is(target: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(fetch_jemalloc.ctypes.util, "find_library",
                        lambda name: "libjemalloc.so.2" if name == "jemalloc" else None)
    assert fetch_jemalloc.main() == 0
    assert not target.exists()
    assert "the system has jemalloc" in capsys.readouterr().out
