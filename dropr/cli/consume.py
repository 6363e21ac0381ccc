"""dropr consume: runs a command once per message of a store's channel."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._common import CommandError, emit_json, positive_int, positive_number

if TYPE_CHECKING:
    from ..store import Message, Store

_STDERR_TAIL = 1000
_POLL = 0.5


def register(commands: Any) -> None:
    """Add ``consume`` to the ``dropr`` command."""
    parser = commands.add_parser(
        "consume",
        help="run a command once per message of a channel",
        description="Run CMD once per message of a channel, the payload on its standard input. "
        "Exit status 0 marks the message processed; anything else is a failure: the message is "
        "retried later and finally becomes a dead letter. Without --follow, stops when no "
        "message is ready. SIGTERM or SIGINT: finishes the messages in hand, then exits 0. "
        "Prints how many were processed and failed.",
    )
    parser.add_argument("--store", required=True, metavar="DIR", help="the store directory")
    parser.add_argument("--channel", required=True, metavar="C", help="the channel to consume")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="handle at most N messages (default: no limit)")
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="K",
        help="run up to K commands at once",
    )
    parser.add_argument(
        "--lease", type=positive_number, default=300.0, metavar="S",
        help="seconds a message is held before another consumer may take it",
    )  # fmt: skip
    parser.add_argument(
        "--max-attempts", type=positive_int, default=5, metavar="N",
        help="failures after which a message becomes a dead letter",
    )  # fmt: skip
    parser.add_argument(
        "--retry-delay", type=positive_number, default=10.0, metavar="S",
        help="seconds before the first retry; doubled at each failure, at most an hour",
    )  # fmt: skip
    parser.add_argument("--follow", action="store_true", help="keep waiting for new messages")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("command", nargs="+", metavar="CMD", help="the command and its arguments (after --)")
    parser.set_defaults(run=_consume)


def _runnable(program: str) -> None:
    found = shutil.which(program) if os.sep not in program else program
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise CommandError(f"cannot run {program!r}: not found or not executable")


class _Consumer:
    """Claims messages as workers free up and runs the command on each."""

    def __init__(self, store: Store, args: argparse.Namespace) -> None:
        self.store = store
        self.args = args
        self.stop = threading.Event()
        self.counts = {"processed": 0, "failed": 0, "released": 0}
        self.error: str | None = None
        self._lock = threading.Lock()

    def run(self) -> None:
        args = self.args
        left = args.limit if args.limit is not None else -1
        with ThreadPoolExecutor(args.concurrency) as pool:
            pending: set[Future[None]] = set()
            while True:
                room = args.concurrency - len(pending)
                if left >= 0:
                    room = min(room, left)
                if room > 0 and not self.stop.is_set():
                    claimed = self.store.claim(args.channel, room, args.lease)
                    pending.update(pool.submit(self._handle, message) for message in claimed)
                    if left >= 0:
                        left -= len(claimed)
                if not pending:
                    if self.stop.is_set() or left == 0 or not args.follow:
                        return
                    self.stop.wait(_POLL)
                    continue
                done, pending = wait(pending, timeout=_POLL if args.follow else None, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()

    def _handle(self, message: Message) -> None:
        try:
            payload = os.open(message.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            done = subprocess.run(self.args.command, stdin=payload, stderr=subprocess.PIPE, check=False)
        except OSError as exc:
            self.store.release(message)
            self.error = f"cannot run {self.args.command[0]!r}: {exc.strerror or exc}"
            self.stop.set()
            return
        finally:
            os.close(payload)
        if done.stderr:
            with self._lock:
                sys.stderr.buffer.write(done.stderr)
                sys.stderr.flush()
        if done.returncode == 0:
            self.store.set_processed(message)
            outcome = "processed"
        elif done.returncode < 0 and self.stop.is_set():
            # Interrupted along with us (Ctrl-C reaches the whole process group): not its fault.
            self.store.release(message)
            outcome = "released"
        else:
            status = f"exit status {done.returncode}" if done.returncode > 0 else f"killed by signal {-done.returncode}"
            tail = done.stderr[-_STDERR_TAIL:].decode("utf-8", "replace").strip()
            self.store.set_failed(message, f"{status}: {tail}" if tail else status)
            outcome = "failed"
        with self._lock:
            self.counts[outcome] += 1


def _consume(args: argparse.Namespace) -> int:
    _runnable(args.command[0])
    from ..store import Store

    store = Store(args.store, max_attempts=args.max_attempts, retry_delay=args.retry_delay)
    if not args.follow and not store.has_channel(args.channel):
        raise CommandError(f"no channel {args.channel!r} in store {store.path}")
    consumer = _Consumer(store, args)

    def stop(signum: int, frame: FrameType | None) -> None:
        consumer.stop.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        consumer.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        emit_json(consumer.counts)
    else:
        for name, count in consumer.counts.items():
            print(f"{name}\t{count}")
    sys.stdout.flush()
    if consumer.error:
        raise CommandError(consumer.error)
    return 0
