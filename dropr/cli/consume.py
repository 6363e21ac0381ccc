"""dropr consume: runs a command once per message of a store's channel, on the store's host
(``--store DIR``) or over the network from a ``dropr-server`` (``--server URL``)."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ._common import CommandError, emit_json, positive_int, positive_number, require

if TYPE_CHECKING:
    from ..remote import RemoteStore
    from ..store import Message, Store

_STDERR_TAIL = 1000
_WAIT = 1.0  # a --follow claim waits this long for a message: SIGTERM is seen within it when idle


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
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--store", metavar="DIR", help="the store directory, on this host (default: none: give --server)"
    )
    where.add_argument(
        "--server",
        metavar="URL",
        help="a dropr-server's URL, to consume over the network (default: none: give --store)",
    )
    parser.add_argument("--token", help="with --server: the server's bearer token (default: $DROPR_TOKEN)")
    parser.add_argument(
        "--ca-file", metavar="FILE", help="with --server: the CAs to trust for https (default: the system's)"
    )
    parser.add_argument("--channel", required=True, metavar="C", help="the channel to consume")
    parser.add_argument("--group", metavar="G", help="the channel's consumer group to consume (default: its own queue)")
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
        "--max-attempts", type=positive_int, metavar="N",
        help="with --store: failures after which a message becomes a dead letter (default: 5; a server keeps its own)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-delay", type=positive_number, metavar="S",
        help="with --store: seconds before the first retry; doubled at each failure, at most an hour (default: 10)",
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

    def __init__(self, store: Store | RemoteStore, args: argparse.Namespace) -> None:
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
                done = {future for future in pending if future.done()}
                pending -= done
                for future in done:
                    future.result()
                room = args.concurrency - len(pending)
                if left >= 0:
                    room = min(room, left)
                if self.stop.is_set() or left == 0 or room == 0:
                    if not pending:
                        return
                    wait(pending, return_when=FIRST_COMPLETED)
                    continue
                wait_s = _WAIT if args.follow else 0.0
                claimed = self.store.claim(args.channel, room, args.lease, group=args.group, wait=wait_s)
                pending.update(pool.submit(self._handle, message) for message in claimed)
                if left >= 0:
                    left -= len(claimed)
                if not claimed and not args.follow:
                    if not pending:
                        return
                    wait(pending, return_when=FIRST_COMPLETED)

    def _handle(self, message: Message) -> None:
        try:
            done = self._run(message)
        except FileNotFoundError as exc:
            if exc.filename == message.path:
                return
            self._cannot_run(message, exc)
            return
        except OSError as exc:
            self._cannot_run(message, exc)
            return
        if done.stderr:
            with self._lock:
                sys.stderr.buffer.write(done.stderr)
                sys.stderr.flush()
        try:
            outcome = self._settle(message, done)
        except StoreError as exc:
            if exc.errno != errno.ESTALE:
                raise
            # The command outlived the lease and another consumer has the message now.
            with self._lock:
                print(f"dropr: {exc}", file=sys.stderr, flush=True)
            return
        with self._lock:
            self.counts[outcome] += 1

    def _settle(self, message: Message, done: subprocess.CompletedProcess[bytes]) -> str:
        """Mark ``message`` as the command's exit status says; the outcome's name."""
        if done.returncode == 0:
            self.store.set_processed(message)
            return "processed"
        if done.returncode < 0 and self.stop.is_set():
            # Interrupted along with us (Ctrl-C reaches the whole process group): not its fault.
            self.store.release(message)
            return "released"
        status = f"exit status {done.returncode}" if done.returncode > 0 else f"killed by signal {-done.returncode}"
        tail = done.stderr[-_STDERR_TAIL:].decode("utf-8", "replace").strip()
        self.store.set_failed(message, f"{status}: {tail}" if tail else status)
        return "failed"

    def _run(self, message: Message) -> subprocess.CompletedProcess[bytes]:
        """The command on ``message``: its file as standard input, or its payload piped in
        (a message that came over the network, or one of a shared file)."""
        command = self.args.command
        if not message.path or not message.whole_file():
            return subprocess.run(command, input=message.read(), stderr=subprocess.PIPE, check=False)
        payload = os.open(message.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return subprocess.run(command, stdin=payload, stderr=subprocess.PIPE, check=False)
        finally:
            os.close(payload)

    def _cannot_run(self, message: Message, exc: OSError) -> None:
        self.store.release(message)
        self.error = f"cannot run {self.args.command[0]!r}: {exc.strerror or exc}"
        self.stop.set()


def _open(args: argparse.Namespace) -> Store | RemoteStore:
    """The store to consume from; CommandError for options that do not go with it."""
    if args.server is not None:
        if args.max_attempts is not None or args.retry_delay is not None:
            raise CommandError("--max-attempts and --retry-delay go with --store: a server keeps its own")
        require("remote")
        from ..remote import RemoteStore

        token = args.token if args.token is not None else os.environ.get("DROPR_TOKEN") or None
        return RemoteStore(args.server, token=token, ca_file=args.ca_file)
    if args.token is not None or args.ca_file is not None:
        raise CommandError("--token and --ca-file go with --server")
    from ..store import Store

    store = Store(args.store, max_attempts=args.max_attempts or 5, retry_delay=args.retry_delay or 10.0)
    if not args.follow and not store.has_channel(args.channel):
        raise CommandError(f"no channel {args.channel!r} in store {store.path}")
    return store


def _consume(args: argparse.Namespace) -> int:
    _runnable(args.command[0])
    store = _open(args)
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
