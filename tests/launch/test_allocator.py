"""Which malloc deepy.py gives its workers (megatron/launch/allocator.py), and that it works."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from megatron.launch import LaunchError, choose_allocator, worker_exports
from megatron.launch.allocator import (
    JEMALLOC_CONF,
    WORKER_MALLOC_TUNABLES,
    find_jemalloc,
)
from tests.launch.test_worker_env import _STEP_FAULTS

LIB = "/opt/lib/libjemalloc.so.2"
TUNED = {"GLIBC_TUNABLES": WORKER_MALLOC_TUNABLES}


def found(environ: Mapping[str, str]) -> str:
    return LIB


def missing(environ: Mapping[str, str]) -> None:
    return None


def test_auto_takes_jemalloc_when_found_and_glibc_otherwise() -> None:
    chosen = choose_allocator({}, found)
    assert chosen.name == "jemalloc"
    assert chosen.env == {"LD_PRELOAD": LIB, "MALLOC_CONF": JEMALLOC_CONF}
    fallback = choose_allocator({}, missing)
    assert (fallback.name, fallback.env) == ("glibc", TUNED)
    assert "no jemalloc" in fallback.describe()


def test_the_users_own_settings_are_kept() -> None:
    mine = choose_allocator({"MALLOC_CONF": "narenas:1"}, found)
    assert mine.env == {"LD_PRELOAD": LIB}
    # Their own preload: no jemalloc added, glibc's tunables as usual (or theirs).
    preload = choose_allocator({"LD_PRELOAD": "/x/libprofiler.so"}, found)
    assert (preload.name, preload.env) == ("as preloaded", TUNED)
    assert "/x/libprofiler.so" in preload.describe()
    both = choose_allocator({"LD_PRELOAD": "/x/lib.so", "GLIBC_TUNABLES": ""}, found)
    assert both.env == {}


def test_glibc_on_request_even_with_jemalloc_at_hand() -> None:
    chosen = choose_allocator({"MEGATRON_ALLOCATOR": "glibc"}, found)
    assert (chosen.name, chosen.env) == ("glibc", TUNED)


@pytest.mark.parametrize(("environ", "finder", "words"), [
    ({"MEGATRON_ALLOCATOR": "jemalloc"}, missing, ["no jemalloc was found",
                                                   "MEGATRON_JEMALLOC"]),
    ({"MEGATRON_ALLOCATOR": "jemalloc", "LD_PRELOAD": "/x/lib.so"}, found,
     ["LD_PRELOAD is set", "/x/lib.so"]),
    ({"MEGATRON_ALLOCATOR": "tcmalloc"}, found, ["'tcmalloc'", "'glibc'", "'jemalloc'"]),
])
def test_impossible_choices_are_errors_that_say_why(environ, finder, words) -> None:
    with pytest.raises(LaunchError) as err:
        choose_allocator(environ, finder)
    for word in words:
        assert word in str(err.value)


def test_a_given_library_path_must_exist(tmp_path: Path) -> None:
    library = tmp_path / "libjemalloc.so.2"
    with pytest.raises(LaunchError, match="MEGATRON_JEMALLOC=.*no such file"):
        find_jemalloc({"MEGATRON_JEMALLOC": str(library)})
    library.write_bytes(b"")
    assert find_jemalloc({"MEGATRON_JEMALLOC": str(library)}) == str(library)


def test_the_choice_reaches_workers_on_other_nodes() -> None:
    env = choose_allocator({}, found).env
    assert worker_exports(env) == env


# The page faults of three training-like steps (after three warm-up ones), then whether
# jemalloc served them.
_STEPS = _STEP_FAULTS + 'print("jemalloc" in open("/proc/self/maps").read())\n'


def _run(env: Mapping[str, str]) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _STEPS], env={**clean, **env},
                         capture_output=True, text=True, timeout=120, check=True).stdout
    faults, loaded = out.split()
    return loaded == "True", int(faults)


def test_the_allocator_found_here_serves_the_worker_and_reuses_its_blocks() -> None:
    # `make setup` fetches jemalloc (tools/fetch_jemalloc.py) where apt-get can; without it
    # the workers must get glibc's tunables instead.
    chosen = choose_allocator({})
    if chosen.name == "glibc":
        assert chosen.env == TUNED and find_jemalloc({}) is None
        return
    loaded, faults = _run(chosen.env)
    plain_loaded, plain_faults = _run({})
    assert loaded and not plain_loaded
    # Plain glibc faults each 33.5 MB block in afresh every step (measured ~98k faults);
    # jemalloc keeping its freed pages reuses them (measured: under 1k).
    assert plain_faults > 50_000
    assert faults < plain_faults / 4
