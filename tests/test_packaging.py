"""requirements/*.txt, pyproject.toml and the installed venv agree with each other."""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
REQS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)$")
# The files `make setup` installs together; they must all be present in the test venv.
MAKE_SETUP = ["", "dev", "tensorboard", "wandb", "eval", "sentencepiece", "hf"]
# Extras whose file is installed specially and therefore has no pyproject extra.
NO_EXTRA = {"mup": "--no-deps"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"not pinned with ==: {line!r}"
        assert _norm(match.group(1)) not in pins, f"{line!r} listed twice"
        pins[_norm(match.group(1))] = match.group(2)
    return pins


def _file_pins(extra: str) -> dict[str, str]:
    name = "requirements.txt" if extra == "" else f"requirements-{extra}.txt"
    return _pins((REQS / name).read_text().splitlines())


def _extras_on_disk() -> list[str]:
    return sorted(
        p.stem.removeprefix("requirements-").removeprefix("requirements")
        for p in REQS.glob("requirements*.txt")
    )


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requirement_files_exist_as_the_makefile_expects() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for extra in MAKE_SETUP:
        name = "requirements.txt" if extra == "" else f"requirements-{extra}.txt"
        assert (REQS / name).is_file()
        assert f"requirements/{name}" in makefile
    assert set(_extras_on_disk()) == {
        "", "bnb", "dev", "eval", "flashattention", "hf", "mup", "sentencepiece",
        "tensorboard", "wandb",
    }  # fmt: skip


def test_core_file_equals_project_dependencies(pyproject: dict) -> None:
    assert _file_pins("") == _pins(pyproject["project"]["dependencies"])


def test_each_extra_file_equals_its_pyproject_extra(pyproject: dict) -> None:
    extras = pyproject["project"]["optional-dependencies"]
    on_disk = [e for e in _extras_on_disk() if e and e not in NO_EXTRA]
    assert sorted(extras) == sorted(on_disk)
    for extra in on_disk:
        assert _file_pins(extra) == _pins(extras[extra]), extra


def test_no_deps_files_say_so_and_have_no_extra(pyproject: dict) -> None:
    for extra, flag in NO_EXTRA.items():
        assert (
            f"pip install {flag} -r requirements/requirements-{extra}.txt"
            in (REQS / f"requirements-{extra}.txt").read_text()
        )
        assert extra not in pyproject["project"]["optional-dependencies"]


def test_torch_pin_matches_constraints_and_nothing_pulls_torchvision() -> None:
    constraints = _pins((REQS / "constraints.txt").read_text().splitlines())
    assert _file_pins("")["torch"] == constraints["torch"] == "2.13.0"
    for extra in _extras_on_disk():
        assert "torchvision" not in _file_pins(extra)
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("torchvision")


def test_make_setup_pins_equal_the_installed_versions() -> None:
    for extra in MAKE_SETUP:
        for name, version in _file_pins(extra).items():
            installed = metadata.version(name).split("+", 1)[0]
            assert installed == version, f"requirements-{extra or 'core'}: {name}"


def test_scripts_point_at_py_modules_that_shadow_nothing(pyproject: dict) -> None:
    modules = pyproject["tool"]["setuptools"]["py-modules"]
    for target in pyproject["project"]["scripts"].values():
        module, _, func = target.partition(":")
        assert module in modules and func == "main"
    taken = {
        top
        for dist in metadata.distributions()
        if _norm(dist.metadata["Name"]) != "neox-trainer"
        for top in (dist.read_text("top_level.txt") or "").split()
    } | {
        top
        for top, dists in metadata.packages_distributions().items()
        if any(_norm(d) != "neox-trainer" for d in dists)
    }
    assert "evaluate" in taken  # HF evaluate, which lm-eval's tasks import
    assert not set(modules) & taken
