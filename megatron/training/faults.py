"""Lost-rank watchdog: when a node dies, the survivors say which rank they lost.

A dead peer surfaces in the survivors as a gloo/NCCL error ("Connection reset by peer") or, if
the network just goes quiet, as a collective timeout after ``distributed_timeout_minutes``.
Neither names the rank that is gone. Here every rank bumps a heartbeat counter in the
rendezvous TCPStore (the one at ``MASTER_ADDR:MASTER_PORT``) from a daemon thread. When a rank
is about to die of an uncaught exception, an ``sys.excepthook`` wrapper waits briefly for the
heartbeats to tell which ranks went quiet and logs, on every surviving rank::

    lost contact with rank 1 (host node-b, pid 4242): no heartbeat for 6.0 s; ...

A rank that finishes normally marks itself done at exit, so a clean shutdown is never reported.
When rank 0's process (which hosts the store) is the one lost, the store stops answering and
that is reported as the loss of rank 0.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

LOG = logging.getLogger(__name__)

_PREFIX = "megatron_faults/"
_STORE_RANK = 0  # torch's env:// rendezvous runs the TCPStore server inside global rank 0


class Heartbeats:
    """Heartbeat bookkeeping over any store with ``add``/``set``/``get``/``check``.

    Pure logic apart from the store, so tests can drive it with a fake store and a fake clock.
    """

    def __init__(
        self, store: Any, rank: int, world_size: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store, self.rank, self.world_size, self.clock = store, rank, world_size, clock
        self._seen: dict[int, tuple[int, float]] = {}
        self.store_lost = False

    def announce(self) -> None:
        """Record who this rank is (host and pid) for the message others may log about it."""
        who = f"host {socket.gethostname()}, pid {os.getpid()}"
        self.store.set(f"{_PREFIX}who/{self.rank}", who)

    def beat(self) -> None:
        """Bump this rank's counter and note when each peer's counter last moved."""
        now = self.clock()
        self.store.add(f"{_PREFIX}hb/{self.rank}", 1)
        for peer in range(self.world_size):
            count = int(self.store.add(f"{_PREFIX}hb/{peer}", 0))
            last = self._seen.get(peer)
            if last is None or last[0] != count:
                self._seen[peer] = (count, now)

    def mark(self, state: str) -> None:
        """Mark this rank ``done`` (clean exit) or ``faulted`` (it saw the failure itself)."""
        self.store.set(f"{_PREFIX}{state}/{self.rank}", "1")

    def _marked(self, peer: int) -> bool:
        keys = [f"{_PREFIX}done/{peer}", f"{_PREFIX}faulted/{peer}"]
        return any(self.store.check([key]) for key in keys)

    def quiet_ranks(self, stale_after: float) -> dict[int, float]:
        """Peers whose counter has not moved for ``stale_after`` seconds, with the silence.

        Ranks that marked themselves done or faulted are alive enough to have said so.
        """
        now = self.clock()
        quiet = {}
        for peer, (_, since) in sorted(self._seen.items()):
            silence = now - since
            if peer != self.rank and silence >= stale_after and not self._marked(peer):
                quiet[peer] = silence
        return quiet

    def describe(self, peer: int) -> str:
        """``host X, pid Y`` for a peer that announced itself, else ``unknown host``."""
        key = f"{_PREFIX}who/{peer}"
        try:
            if self.store.check([key]):
                return self.store.get(key).decode()
        except Exception:  # only decoration for the message
            pass
        return "unknown host"


def lost_rank_message(lost: dict[int, str], silence: dict[int, float], error: str) -> str:
    """The line every survivor logs; ``lost`` maps rank -> who it was."""
    parts = [
        f"rank {rank} ({who})"
        + (f": no heartbeat for {silence[rank]:.1f} s" if rank in silence else "")
        for rank, who in sorted(lost.items())
    ]
    return f"lost contact with {'; '.join(parts)}; the collective failed with: {error}"


# Substrings that mark an exception as a failed collective rather than an ordinary bug.
_COMM_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "broken pipe", "peer")


def looks_like_comm_failure(exc: BaseException) -> bool:
    """True for torch's distributed errors and backend errors about peers or timeouts."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _COMM_MARKERS)


class Watchdog:
    """A heartbeat thread plus an excepthook that names the lost ranks before this rank dies."""

    join_timeout = 10.0
    """Seconds ``stop`` waits for the thread to finish its current beat (two store timeouts)."""

    def __init__(self, heartbeats: Heartbeats, *, interval: float, stale_after: float) -> None:
        self.hb, self.interval, self.stale_after = heartbeats, interval, stale_after
        self._stop = threading.Event()
        self._warned: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="lost-rank-watchdog", daemon=True)
        self._previous_hook = sys.excepthook

    @classmethod
    def start(cls, *, interval: float = 1.0, stale_after: float = 8.0) -> Watchdog | None:
        """Start watching after ``torch.distributed`` is initialised; None for one process.

        Connects a second client to the rendezvous store named by ``MASTER_ADDR`` and
        ``MASTER_PORT`` (set by every launcher we support before ``init_distributed``).
        """
        import torch.distributed as dist

        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not dist.is_initialized() or dist.get_world_size() < 2 or not addr or not port:
            return None
        store = dist.TCPStore(
            addr, int(port), is_master=False, timeout=timedelta(seconds=max(interval * 5, 5.0))
        )
        heartbeats = Heartbeats(store, dist.get_rank(), dist.get_world_size())
        heartbeats.announce()
        heartbeats.beat()
        return cls(heartbeats, interval=interval, stale_after=stale_after).watch()

    def watch(self) -> Watchdog:
        """Install the excepthook and the exit handler, and start beating."""
        sys.excepthook = self._excepthook
        atexit.register(self.stop)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.hb.beat()
                quiet = self.hb.quiet_ranks(self.stale_after)
            except Exception:  # the store host is gone; the hook reports it
                self.hb.store_lost = True
                return
            for rank in sorted(set(quiet) - self._warned):
                self._warned.add(rank)
                LOG.warning(
                    "no heartbeat from rank %d (%s) for %.1f s; it may be lost",
                    rank, self.hb.describe(rank), quiet[rank],
                )

    def stop(self) -> None:
        """Clean exit: stop the thread, then tell the peers this rank is done.

        The thread is joined, not just told to stop: a daemon thread still inside a store call
        when the interpreter shuts down is killed as it takes the GIL back, from inside C++,
        and that aborts the process ("terminate called without an active exception") after a
        run that had finished well. One call waits at most the store's timeout.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.join_timeout)
        if not self.hb.store_lost:
            try:
                self.hb.mark("done")
            except Exception:  # nothing left to tell
                pass

    def lost_ranks(self) -> tuple[dict[int, str], dict[int, float]]:
        """Wait up to ``stale_after`` plus two beats for quiet peers; (who, silence) per rank."""
        deadline = time.monotonic() + self.stale_after + 2 * self.interval
        quiet: dict[int, float] = {}
        while time.monotonic() < deadline and not self.hb.store_lost:
            try:
                self.hb.beat()  # also probes the store: its host may be the one lost
                quiet = self.hb.quiet_ranks(self.stale_after)
            except Exception:  # the store went away while we waited
                self.hb.store_lost = True
                break
            if quiet:
                break
            time.sleep(self.interval / 2)
        if self.hb.store_lost and self.hb.rank != _STORE_RANK:
            return {_STORE_RANK: "it hosts the rendezvous store, which stopped answering"}, {}
        return {rank: self.hb.describe(rank) for rank in quiet}, quiet

    def _excepthook(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        if looks_like_comm_failure(exc):
            self._report(exc)
        self._previous_hook(exc_type, exc, tb)

    def _report(self, exc: BaseException) -> None:
        try:
            self.hb.mark("faulted")
        except Exception:  # the store host is gone
            self.hb.store_lost = True
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        lost, silence = self.lost_ranks()
        if lost:
            LOG.error("rank %d: %s", self.hb.rank, lost_rank_message(lost, silence, error))
        else:
            LOG.error(
                "rank %d: a collective failed but every peer still has a heartbeat: %s",
                self.hb.rank, error,
            )
