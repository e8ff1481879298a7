"""End a worker process once its own clean-up has run, skipping the interpreter's teardown.

A run that finished well (its last step logged, its checkpoint written, its process groups
destroyed) still aborted now and then while the interpreter tore itself down: "terminate
called without an active exception", exit status 250 through DeepSpeed's launcher, which
then reports the whole job as failed: about once in 50 to 150 single-process CPU launches,
and 2 in 50 with two launches sharing the 2 cores. A core dump shows why (it is
pytorch/pytorch#190489): one of gloo's worker threads (``ProcessGroupGloo::runLoop``) was
destroying a finished all-reduce, whose last reference to a tensor needs the GIL to be
dropped; the interpreter was already finalising, so taking the GIL ended the thread with
``pthread_exit``, whose unwinding through C++ calls ``std::terminate``. Destroying the
process groups does not prevent it, since the Python objects still referring to them keep
their worker threads alive until teardown.

Python's own exit does, in order: join the non-daemon threads, run the ``atexit`` handlers,
flush the standard streams, then tear down modules and objects and run C++ static
destructors (where gloo's thread met the finalising interpreter).
:func:`exit_after_cleanup` does the first three, then ends the process with ``os._exit``,
which takes gloo's threads down with it. Files our code writes are closed or flushed by then
(checkpoints and metrics are closed where they are written, the tee and logging flush each
line, ``weakref.finalize`` callbacks run as an ``atexit`` handler).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def _join_non_daemon_threads() -> None:
    """Wait for threads that Python's own exit would wait for."""
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon and thread.is_alive():
            thread.join()


def exit_after_cleanup(code: int | None) -> NoReturn:
    """Leave the process with ``code`` (None is 0) after the clean-up Python's exit would run,
    without the interpreter's teardown; for worker entry points' normal ends only (an
    exception still takes Python's own way out, traceback and all)."""
    _join_non_daemon_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing left to save
            pass
    os._exit(code or 0)
