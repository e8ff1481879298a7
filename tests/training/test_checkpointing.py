"""Atomic publication, damage detection, pruning and save schedules of checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron.training import checkpointing as ckpt


class FakeEngine:
    """Writes files the way DeepSpeed's save_checkpoint lays them out."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool):
        self.calls.append((save_dir, tag, save_latest))
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"m" * 100)
        (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 50)


def _save(root: Path, iteration: int, engine: FakeEngine | None = None) -> Path:
    return ckpt.save_checkpoint(
        engine or FakeEngine(),
        str(root),
        iteration,
        {"iteration": iteration},
        {"configs/model.yml": "hidden_size: 8\n"},
        is_rank0=True,
        barrier=lambda: None,
    )


def test_save_publishes_after_writing(tmp_path: Path) -> None:
    engine = FakeEngine()
    folder = _save(tmp_path, 10, engine)
    # DeepSpeed must not write `latest` itself: only we do, after every rank finished.
    assert engine.calls == [(str(tmp_path), "global_step10", False)]
    assert (tmp_path / "latest").read_text() == "global_step10"
    assert (folder / "configs" / "model.yml").read_text() == "hidden_size: 8\n"
    assert ckpt.checkpoint_problem(folder) is None
    assert ckpt.find_loadable_tag(str(tmp_path)) == "global_step10"


def test_truncated_latest_falls_back_to_previous(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    newest = _save(tmp_path, 20)
    shard = newest / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:37])
    problem = ckpt.checkpoint_problem(newest)
    assert problem is not None and "37 bytes, expected 100" in problem
    assert ckpt.find_loadable_tag(str(tmp_path)) == "global_step10"


def test_unpublished_checkpoint_is_ignored(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    FakeEngine().save_checkpoint(str(tmp_path), "global_step20", {}, False)  # crash before publish
    assert ckpt.find_loadable_tag(str(tmp_path)) == "global_step10"


def test_empty_or_absent_load_dir_is_a_fresh_start(tmp_path: Path) -> None:
    assert ckpt.find_loadable_tag(str(tmp_path / "absent")) is None
    assert ckpt.find_loadable_tag(str(tmp_path)) is None
    assert ckpt.find_loadable_tag(None) is None


def test_requested_iteration_must_be_complete(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    assert ckpt.find_loadable_tag(str(tmp_path), iteration=10) == "global_step10"
    with pytest.raises(ckpt.CheckpointError, match="iteration 30"):
        ckpt.find_loadable_tag(str(tmp_path), iteration=30)


def test_keep_last_n_deletes_the_oldest(tmp_path: Path) -> None:
    for it in (5, 10, 100, 20):
        _save(tmp_path, it)
    deleted = ckpt.prune_checkpoints(str(tmp_path), 2)
    assert deleted == ["global_step5", "global_step10"]
    assert ckpt.list_tags(str(tmp_path)) == ["global_step20", "global_step100"]
    assert ckpt.prune_checkpoints(str(tmp_path), None) == []


@pytest.mark.parametrize(
    ("train_iters", "factor", "scale", "extra", "expected"),
    [
        (50, 10, "linear", None, {10, 20, 30, 40}),
        (50, 20, "linear", [5, 45, 70], {5, 20, 40, 45}),
        (100, 2, "log", None, {2, 4, 8, 16, 32, 64}),
        (30, None, "linear", [7], {7}),
    ],
)
def test_save_iterations(train_iters, factor, scale, extra, expected) -> None:
    assert ckpt.save_iterations(train_iters, factor, scale, extra) == expected
