"""Two-node runs on one machine through DeepSpeed's no_ssh mode, and the loss of a node.

Each "node" is a separate `./deepy.py train.py cfg.yml` launch with `no_ssh`, its own
`node_rank`, a shared two-host hostfile and `master_addr: 127.0.0.1`; one process per node.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.launch import start_deepy, tiny_config, train_losses
from tests.e2e.multinode_launch import (
    manifest_problems,
    node_configs,
    node_log,
    start_nodes,
    stop,
    wait_all,
    wait_for_file,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(autouse=True)
def private_extension_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep DeepSpeed's JIT-built shm comm op where other environments cannot invalidate it.

    Every CPU process group loads that op; in the shared ~/.cache/torch_extensions another
    PATH or compiler rebuilds it (minutes on a busy machine) under our running launches.
    """
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        cache = Path.home() / ".cache" / "neox-trainer" / "torch_extensions"
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))

TRAIN_ITERS = 6


@pytest.mark.timeout(600)
def test_two_nodes_train_exactly_like_one_node_with_two_processes(
    char_corpus: str, tmp_path: Path
) -> None:
    base = tiny_config(
        char_corpus, tmp_path / "two_nodes", train_iters=TRAIN_ITERS, checkpoint_factor=100,
        eval_interval=100, eval_iters=0,
    )
    reference = tiny_config(
        char_corpus, tmp_path / "one_node", train_iters=TRAIN_ITERS, checkpoint_factor=100,
        eval_interval=100, eval_iters=0, num_gpus=2,
    )
    # The three launches run side by side; the machine is small, the model tiny.
    procs = [*start_nodes(node_configs(base, tmp_path / "two_nodes"), tmp_path / "two_nodes")]
    procs.append(start_deepy(reference, tmp_path / "one_node"))
    try:
        codes = wait_all(procs, timeout=540)
    finally:
        stop(procs)
    logs = [node_log(tmp_path / "two_nodes", rank) for rank in (0, 1)]
    assert codes == [0, 0, 0], f"exit codes {codes}\n{logs[0][-4000:]}\n{logs[1][-4000:]}"

    # Each launch started only its own node's single process, in one world of two.
    for rank, log in enumerate(logs):
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in log
        assert "dist_world_size=2" in log
    assert "[rank 0]" in logs[0] and "[rank 0]" not in logs[1]

    two_nodes = train_losses(tmp_path / "two_nodes" / "node0")
    one_node = train_losses(tmp_path / "one_node")
    assert sorted(two_nodes) == list(range(1, TRAIN_ITERS + 1))
    assert sorted(one_node) == sorted(two_nodes)
    for iteration, loss in one_node.items():
        assert abs(two_nodes[iteration] - loss) <= 1e-6, (iteration, two_nodes[iteration], loss)
    # Training happened: a char-level model starts near ln(vocab) and goes down from there.
    assert two_nodes[TRAIN_ITERS] < two_nodes[1] - 0.3
    # Rank 1 lives on node 1; it never writes the metrics file.
    assert not (tmp_path / "two_nodes" / "node1" / "logs" / "metrics.jsonl").exists()


BOUND_S = 60


@pytest.mark.timeout(600)
def test_losing_a_node_stops_the_other_in_bounded_time_naming_the_rank(
    char_corpus: str, tmp_path: Path
) -> None:
    base = tiny_config(
        char_corpus, tmp_path, train_iters=2000, checkpoint_factor=5, eval_interval=100_000,
        eval_iters=0, distributed_timeout_minutes=0.5,
    )
    procs = start_nodes(node_configs(base, tmp_path), tmp_path)
    latest = tmp_path / "checkpoints" / "latest"
    try:
        wait_for_file(latest, procs, timeout=420)
        time.sleep(1.0)  # a few more steps, so the kill lands mid-training
        os.killpg(procs[1].pid, signal.SIGKILL)  # node 1: its launcher and its worker
        killed_at = time.monotonic()
        code = procs[0].wait(timeout=BOUND_S + 60)
        elapsed = time.monotonic() - killed_at
    finally:
        stop(procs)
    log = node_log(tmp_path, 0)
    assert code != 0, log[-4000:]
    assert elapsed < BOUND_S, f"node 0 took {elapsed:.0f} s to exit\n{log[-4000:]}"
    assert "lost contact with rank 1" in log, log[-6000:]
    assert "host " in log.split("lost contact with rank 1", 1)[1].splitlines()[0]

    # The checkpoint `latest` names is whole and loads.
    tag = latest.read_text().strip()
    ckpt = tmp_path / "checkpoints" / tag
    assert manifest_problems(ckpt) == []
    states = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert f"global_step{states['iteration']}" == tag
    assert states["iteration"] % 5 == 0 and states["dp_world_size"] == 2
    weights = states["module"]["sequential.0.word_embeddings.weight"]
    assert weights.shape[1] == 64 and math.isfinite(float(weights.abs().sum()))
