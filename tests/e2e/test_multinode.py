"""Two-node runs on one machine through DeepSpeed's no_ssh mode, and the loss of a node.

Each "node" is a separate `./deepy.py train.py cfg.yml` launch with `no_ssh`, its own
`node_rank`, a shared two-host hostfile and `master_addr: 127.0.0.1`; one process per node.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from megatron.training.faults import (
    Heartbeats,
    Watchdog,
    looks_like_comm_failure,
    lost_rank_message,
)
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


@pytest.mark.distributed
@pytest.mark.slow
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


@pytest.mark.distributed
@pytest.mark.slow
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


# The watchdog's logic, driven without processes: a dict store and a hand-moved clock.


class FakeStore:
    """The four TCPStore calls the watchdog uses; ``broken`` makes them fail like a dead host."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.broken = False

    def _alive(self) -> None:
        if self.broken:
            raise RuntimeError("Connection reset by peer")

    def add(self, key: str, amount: int) -> int:
        self._alive()
        value = int(self.data.get(key, b"0")) + amount
        self.data[key] = str(value).encode()
        return value

    def set(self, key: str, value: str) -> None:
        self._alive()
        self.data[key] = value.encode()

    def get(self, key: str) -> bytes:
        self._alive()
        return self.data[key]

    def check(self, keys: list[str]) -> bool:
        self._alive()
        return all(key in self.data for key in keys)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def three_ranks() -> tuple[FakeStore, Clock, list[Heartbeats]]:
    store, clock = FakeStore(), Clock()
    ranks = [Heartbeats(store, rank, 3, clock=clock) for rank in range(3)]
    for hb in ranks:
        hb.announce()
    return store, clock, ranks


def test_a_rank_whose_heartbeat_stops_is_quiet_after_the_threshold_and_not_before() -> None:
    _, clock, (r0, r1, r2) = three_ranks()
    for _ in range(3):  # rounds at t = 100, 101, 102; in each, rank 0 reads before rank 2 beats
        for hb in (r0, r1, r2):
            hb.beat()
        clock.now += 1
    for _ in range(5):  # rank 2 is gone; rounds at t = 103 .. 107
        r0.beat()
        r1.beat()
        clock.now += 1
    # Rank 2's last beat (t = 102) came after rank 0's read at t = 102, so rank 0 first saw
    # the counter move in its read at t = 103; at t = 108 that is 5 s of silence.
    assert r0.quiet_ranks(stale_after=5.5) == {}
    assert r0.quiet_ranks(stale_after=5.0) == {2: pytest.approx(5.0)}
    assert r1.quiet_ranks(stale_after=5.0) == {2: pytest.approx(5.0)}
    assert r0.describe(2) == f"host {socket.gethostname()}, pid {os.getpid()}"


def test_ranks_that_said_done_or_faulted_are_never_reported_lost() -> None:
    _, clock, (r0, r1, r2) = three_ranks()
    for hb in (r0, r1, r2):
        hb.beat()
    r1.mark("done")
    r2.mark("faulted")
    clock.now += 30
    r0.beat()
    assert r0.quiet_ranks(stale_after=5.0) == {}


def test_a_rank_that_never_announced_is_described_as_unknown() -> None:
    store = FakeStore()
    assert Heartbeats(store, 0, 2).describe(1) == "unknown host"


def test_watchdog_names_the_silent_rank() -> None:
    _, clock, (r0, r1, r2) = three_ranks()
    for hb in (r0, r1, r2):
        hb.beat()
    r0.beat()  # rank 0 has now read rank 1's final count, at t = 100
    clock.now += 10
    r2.beat()
    lost, silence = Watchdog(r0, interval=0.01, stale_after=5.0).lost_ranks()
    assert set(lost) == {1} and silence == {1: pytest.approx(10.0)}
    assert lost[1].startswith("host ")


def test_watchdog_reports_rank0_when_the_store_it_hosts_stops_answering() -> None:
    store, _, (r0, r1, _) = three_ranks()
    r1.beat()
    store.broken = True
    lost, silence = Watchdog(r1, interval=0.01, stale_after=0.05).lost_ranks()
    assert list(lost) == [0] and "rendezvous store" in lost[0] and silence == {}


def test_watchdog_finds_no_one_lost_when_every_peer_beats() -> None:
    _, _, (r0, r1, r2) = three_ranks()
    for hb in (r0, r1, r2):
        hb.beat()
    started = time.monotonic()
    assert Watchdog(r0, interval=0.01, stale_after=0.2).lost_ranks() == ({}, {})
    assert time.monotonic() - started < 5  # it gives up after stale_after plus two beats


def test_lost_rank_message_names_rank_host_and_silence() -> None:
    message = lost_rank_message({1: "host node-1, pid 7"}, {1: 8.04}, "Read error")
    assert message == (
        "lost contact with rank 1 (host node-1, pid 7): no heartbeat for 8.0 s; "
        "the collective failed with: Read error"
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("[gloo/tcp/pair.cc:537] Read error: Connection reset by peer"), True),
        (RuntimeError("Timed out waiting 30000ms for send operation to complete"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"), False),
        (ValueError("gloo"), False),
    ],
)
def test_only_communication_failures_trigger_the_diagnosis(
    exc: BaseException, expected: bool
) -> None:
    assert looks_like_comm_failure(exc) is expected


def test_node_config_becomes_a_no_ssh_runner_argv_for_that_node(tmp_path: Path) -> None:
    from megatron.launch import runner_argv
    from megatron.neox_arguments import NeoXArgs

    configs = node_configs(tiny_config("unused/prefix", tmp_path, master_port=29555), tmp_path)
    args = NeoXArgs.from_dict(configs[1])
    assert args.global_num_gpus == 2  # two hosts of one slot each in the hostfile
    assert args.distributed_timeout_minutes == 10.0
    argv = runner_argv(args, "train.py", ["--x"], environ={})
    assert argv[argv.index("--hostfile") + 1] == str(tmp_path / "hostfile")
    assert argv[argv.index("--master_addr") + 1] == "127.0.0.1"
    assert argv[argv.index("--master_port") + 1] == "29555"
    assert argv[argv.index("--no_ssh") + 1 : argv.index("--no_ssh") + 3] == ["--node_rank", "1"]
    assert argv[-2:] == ["train.py", "--x"]


@pytest.mark.parametrize("minutes", [0, -1.5])
def test_a_non_positive_collective_timeout_is_a_config_error(minutes: float) -> None:
    from megatron.neox_arguments import ConfigError, NeoXArgs

    config = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 64,
              "max_position_embeddings": 64, "distributed_timeout_minutes": minutes}
    with pytest.raises(ConfigError, match="distributed_timeout_minutes"):
        NeoXArgs.from_dict(config)
