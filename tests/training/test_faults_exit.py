"""The lost-rank watchdog at interpreter exit: a finished run must exit 0.

Its heartbeat thread spends most of its life inside TCPStore calls (C++, GIL released). A
daemon thread still inside one when Python shuts down is killed as it takes the GIL back, from
inside C++, which aborts the process with "terminate called without an active exception": a
2-process training run that had finished well then exited with an error (seen in 1 of about
12 benchmark launches). ``Watchdog.stop`` (run at exit) must therefore wait for the thread.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.exits import assert_exits_cleanly

# A store whose ``add`` first blocks inside C++ for 0.5 s (a wait for a key that never comes),
# so the watchdog thread is certainly inside a C++ call when the main thread exits.
SCRIPT = textwrap.dedent("""
    import sys, time
    from datetime import timedelta
    import torch.distributed as dist
    from megatron.training.faults import Heartbeats, Watchdog

    class SlowStore:
        def __init__(self, store):
            self.store = store
        def add(self, key, amount):
            try:
                self.store.wait([key + "/never"], timedelta(seconds=0.5))
            except Exception:  # the timeout
                pass
            return self.store.add(key, amount)
        def __getattr__(self, name):
            return getattr(self.store, name)

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    Watchdog(Heartbeats(SlowStore(server), 0, 1), interval=0.01, stale_after=8.0).watch()
    time.sleep(0.2)  # the thread's first beat is now blocked in the store
    print("main thread done", flush=True)
    sys.exit(0)
""")


@pytest.mark.timeout(120)
def test_exit_waits_for_the_heartbeat_thread_instead_of_aborting() -> None:
    assert_exits_cleanly(SCRIPT, attempts=2)
