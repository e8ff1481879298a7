"""Dockerfile, docker-compose.yml and .dockerignore, checked without a Docker engine."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KNOWN = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


def _ignored(path: str) -> bool:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]  # fmt: skip
    return any(fnmatch.fnmatch(path.rstrip("/"), p) for p in patterns)


def _hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    assert found, "hadolint missing: pip install -r requirements/requirements-dev.txt"
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_parser_sees_a_continued_run_as_one_step() -> None:
    text = "# c\nFROM a:1\nRUN x \\\n    # inside\n    && y\n"
    assert instructions(text) == [("FROM", "a:1"), ("RUN", "x && y")]


def test_instructions_are_valid_and_base_is_pinned_to_our_torch(steps) -> None:
    assert {keyword for keyword, _ in steps} <= KNOWN
    bases = [args for keyword, args in steps if keyword == "FROM"]
    assert len(bases) == 1
    image, _, tag = bases[0].partition(":")
    assert image == "pytorch/pytorch" and tag and "latest" not in tag
    torch_pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements/requirements.txt").read_text(),
                          re.M)  # fmt: skip
    assert torch_pin and tag.startswith(f"{torch_pin.group(1)}-cuda") and tag.endswith("-devel")


def test_apt_installs_clean_their_lists_and_skip_recommends(steps) -> None:
    runs = [args for keyword, args in steps if keyword == "RUN" and "apt-get install" in args]
    assert runs
    for args in runs:
        assert "apt-get update" in args and "--no-install-recommends" in args
        assert args.rstrip().endswith("rm -rf /var/lib/apt/lists/*")
    packages = " ".join(runs).split()
    for needed in ("openmpi-bin", "pdsh", "openssh-server", "libaio-dev", "libjemalloc2"):
        assert needed in packages


def test_every_copied_path_exists_and_is_in_the_build_context(steps) -> None:
    assert "ADD" not in {keyword for keyword, _ in steps}  # COPY only: no remote fetches
    copies = [shlex.split(args) for keyword, args in steps if keyword == "COPY"]
    assert copies
    for words in copies:
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source == "." or not _ignored(source), f"{source} is in .dockerignore"


def test_pip_installs_only_pinned_requirement_files(steps) -> None:
    pip_runs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    installed: list[str] = []
    for args in pip_runs:
        for command in args.split("&&"):
            if "pip install" not in command:
                continue
            words = shlex.split(command.split("pip install", 1)[1])
            rest = [w for i, w in enumerate(words) if not w.startswith("-")
                    and words[i - 1] != "-r"]  # fmt: skip
            assert rest in ([], ["."]), f"unpinned install of {rest}"
            installed += [words[i + 1] for i, w in enumerate(words) if w == "-r"]
    on_disk = {f"requirements/{p.name}" for p in (ROOT / "requirements").glob("requirements*.txt")}
    assert set(installed) == on_disk
    assert "pip install --no-deps -r requirements/requirements-mup.txt" in " ".join(pip_runs)
    assert "pip install --no-deps -e ." in " ".join(pip_runs)


def test_runs_as_non_root_with_ssh_and_a_healthcheck(steps) -> None:
    keywords = [keyword for keyword, _ in steps]
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    health = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "import megatron" in health[0] and "ds_report" in health[0]
    ssh_setup = " ".join(
        args for keyword, args in steps if keyword == "RUN" and "ssh-keygen" in args
    )
    assert "authorized_keys" in ssh_setup and "Port 2222" in ssh_setup
    assert "sshd" in dict(steps)["ENTRYPOINT"]


def test_compose_mounts_data_and_checkpoints_into_the_workdir(steps) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    workdir = dict(steps)["WORKDIR"]
    mounts = dict(volume.split(":")[:2] for volume in service["volumes"])
    assert mounts["./data"] == f"{workdir}/data"
    assert mounts["./checkpoints"] == f"{workdir}/checkpoints"
    assert service["build"] == "."
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and service["image"] == f"neox-trainer:{version.group(1)}"
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_dockerignore_keeps_data_venv_and_git_out() -> None:
    for path in (".git", ".venv", "data", "checkpoints", "megatron/__pycache__"):
        assert _ignored(path), path
    for path in ("megatron", "requirements", "pyproject.toml", "Dockerfile"):
        assert not _ignored(path), path
