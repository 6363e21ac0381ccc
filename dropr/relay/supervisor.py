"""The angel: ``dropr-relay`` runs its worker in a child process and restarts it if it dies.

The command line hands :func:`supervise` the worker's command, so this package does not
depend on it. The worker, not this parent, holds the spool's lock; the parent starts a new
worker only after the old one has exited (the kernel has then released its lock). A worker
that was killed by a signal or crashed (:data:`EXIT_CRASH`) is restarted after a delay that
grows from :data:`MIN_DELAY` to :data:`MAX_DELAY` and starts small again once a worker has
run for :data:`STABLE_SECONDS`. Any other exit status is final: a clean stop, ``--once``
results, and the failures at start-up that a restart cannot fix (bad configuration, a
missing dependency, another relay holding the lock, an unusable spool). With ``--once`` a
crashing worker is restarted at most :data:`ONCE_RESTARTS` times. SIGTERM and SIGINT are
passed on to the worker, which finishes its requests in flight. The worker asks the kernel
for a SIGTERM should the parent die, so that no orphan keeps relaying unsupervised.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

from .. import _libc

EXIT_FAILED = 1
EXIT_LOCKED = 3
EXIT_CRASH = 70
MIN_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_SECONDS = 60.0
ONCE_RESTARTS = 3
PARENT_ENV = "DROPR_RELAY_SUPERVISOR"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("dropr.relay")


def supervise(command: Sequence[str], *, once: bool) -> int:
    """Run the worker ``command`` until it ends for good; returns its exit status."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    delay = MIN_DELAY
    restarts = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        status = child.wait()
        if stopping:
            return status if status >= 0 else EXIT_FAILED
        if status >= 0 and status != EXIT_CRASH:
            return status
        if once and restarts >= ONCE_RESTARTS:
            log.error("worker %s; not restarting (--once)", _describe(status))
            return EXIT_FAILED
        if time.monotonic() - started >= STABLE_SECONDS:
            delay = MIN_DELAY
        log.error("worker %s; restarting in %.1f s", _describe(status), delay)
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, delay))
        if stopping:
            return 0
        delay = min(delay * 2, MAX_DELAY)
        restarts += 1


def bind_to_parent() -> None:
    """In a supervised worker: get SIGTERM when the supervisor dies (Linux only)."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return
    prctl = _libc.function("prctl", (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong))
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if str(os.getppid()) != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"crashed (exit status {status})"
