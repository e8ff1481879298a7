"""Rank prefix on every record; non-zero ranks only pass warnings and errors."""

import logging

import pytest

from megatron.utils.logging import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore() -> None:
    yield
    configure_logging(rank=0)


def test_rank_zero_logs_info_with_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(rank=0)
    get_logger("megatron.training.loop").info("hello %d", 7)
    err = capsys.readouterr().err
    assert "[rank 0] INFO megatron.training.loop: hello 7" in err


def test_other_ranks_only_warn(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(rank=3)
    logger = get_logger("megatron.data")
    logger.info("summary")
    logger.warning("disk slow")
    err = capsys.readouterr().err
    assert "summary" not in err
    assert "[rank 3] WARNING megatron.data: disk slow" in err


def test_names_outside_the_tree_are_rerooted_and_handler_not_duplicated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(rank=0)
    configure_logging(rank=0, level=logging.DEBUG)
    logger = get_logger("tools.plot")
    assert logger.name == "megatron.tools.plot"
    logger.debug("once")
    assert capsys.readouterr().err.count("once") == 1


def test_rank_from_environment(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANK", "5")
    configure_logging()
    get_logger("megatron.x").error("boom")
    assert "[rank 5] ERROR" in capsys.readouterr().err
