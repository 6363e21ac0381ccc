"""``dropr store`` (administration of a server's store) and ``dropr consume``."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._common import CommandError, emit_json, minutes, positive_int, positive_number

if TYPE_CHECKING:
    from ..store import Message, Store

_STDERR_TAIL = 1000
_POLL = 0.5


def register(commands: Any) -> None:
    """Add ``store`` and ``consume`` to the ``dropr`` command."""
    _register_store(commands)
    _register_consume(commands)


# -- dropr store DIR ACTION ----------------------------------------------------------------


def _register_store(commands: Any) -> None:
    parser = commands.add_parser(
        "store",
        help="inspect and clean a server's store",
        description="Inspect and clean a server's store. Lists print one message a line: "
        "channel, id, priority, client, time (UTC), size in bytes, tab separated.",
    )
    parser.add_argument("dir", metavar="DIR", help="the store directory")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, run: Callable[[argparse.Namespace], int], help: str, json: bool = False) -> Any:
        sub = actions.add_parser(name, help=help, description=help)
        if json:
            sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(run=run)
        return sub

    action("channels", _channels, "the channels that have received messages", json=True)
    for state in ("queued", "processed"):
        action(f"count-{state}", _counter(state), f"how many {state} messages a channel has").add_argument(
            "channel", metavar="CH"
        )
        action(
            f"list-{state}",
            _lister(state),
            f"the {state} messages (of every channel, or of CH...)",
            json=True,
        ).add_argument("channel", metavar="CH", nargs="*")
        action(
            f"sum-{state}",
            _summer(state),
            f"{state} messages per channel, then the total",
            json=True,
        )
    wipe = action("wipe-processed", _wipe, "remove a channel's messages processed MINUTES ago or earlier")
    wipe.add_argument("channel", metavar="CH")
    wipe.add_argument("minutes", metavar="MINUTES", type=minutes)
    wipe_all = action(
        "wipe-all-processed",
        _wipe,
        "remove every channel's messages processed MINUTES ago or earlier",
    )
    wipe_all.add_argument("minutes", metavar="MINUTES", type=minutes)
    wipe_all.set_defaults(channel=None)
    dead = action(
        "list-dead",
        _list_dead,
        "a channel's dead letters, with attempts and last reason",
        json=True,
    )
    dead.add_argument("channel", metavar="CH")
    requeue = action(
        "requeue-dead",
        _requeue_dead,
        "put a channel's dead letters (all, or these ids) back in its queue",
    )
    requeue.add_argument("channel", metavar="CH")
    requeue.add_argument("ids", metavar="ID", nargs="*")


def _open(args: argparse.Namespace, channels: Iterable[str] = ()) -> Store:
    """The store of ``args.dir``; CommandError if it is missing or lacks one of ``channels``."""
    from ..store import Store

    store = Store(args.dir)
    for channel in channels:
        if not store.has_channel(channel):
            raise CommandError(f"no channel {channel!r} in store {store.path}")
    return store


def _channels(args: argparse.Namespace) -> int:
    names = _open(args).channels()
    if args.json:
        emit_json(names)
    else:
        for name in names:
            print(name)
    return 0


def _count_of(store: Store, state: str, channel: str) -> int:
    if state == "queued":
        return int(store.count_queued(channel))
    return int(store.count_processed(channel))


def _counter(state: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        store = _open(args, [args.channel])
        print(_count_of(store, state, args.channel))
        return 0

    return run


def _summer(state: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        store = _open(args)
        counts = {channel: _count_of(store, state, channel) for channel in store.channels()}
        total = sum(counts.values())
        if args.json:
            emit_json({"channels": counts, "total": total})
        else:
            for channel, count in counts.items():
                print(f"{channel}\t{count}")
            print(f"total\t{total}")
        return 0

    return run


def _lister(state: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        store = _open(args, args.channel)
        rows = []
        for channel in args.channel or store.channels():
            found = store.messages(channel) if state == "queued" else store.processed(channel)
            rows += _rows(found)
        _print_rows(rows, args.json)
        return 0

    return run


def _list_dead(args: argparse.Namespace) -> int:
    store = _open(args, [args.channel])
    rows = []
    for message in store.dead_letters(args.channel):
        for row in _rows([message]):
            row["attempts"] = message.attempts
            row["reasons" if args.json else "reason"] = (
                list(message.reasons) if args.json else _one_line(message.reasons[-1] if message.reasons else "")
            )
            rows.append(row)
    _print_rows(rows, args.json)
    return 0


def _requeue_dead(args: argparse.Namespace) -> int:
    from .._impl import codec

    bad = [text for text in args.ids if not codec.is_message_id(text)]
    if bad:
        raise CommandError(f"not a message id: {bad[0]!r}")
    store = _open(args, [args.channel])
    print(store.requeue_dead(args.channel, args.ids or None))
    return 0


def _wipe(args: argparse.Namespace) -> int:
    store = _open(args, [args.channel] if args.channel is not None else [])
    print(store.wipe_processed(args.minutes, args.channel))
    return 0


def _rows(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """One row per message still there (a message may move while it is listed)."""
    rows = []
    for message in messages:
        try:
            size = os.stat(message.path).st_size
        except FileNotFoundError:
            continue
        rows.append(
            {
                "channel": message.channel,
                "id": message.id,
                "priority": message.priority,
                "client": message.client,
                "time": _iso(message.time),
                "size": size,
            }
        )
    return rows


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        emit_json(rows)
        return
    out = sys.stdout
    for row in rows:
        out.write("\t".join(str(value) for value in row.values()) + "\n")


def _iso(seconds: float) -> str:
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


# -- dropr consume ---------------------------------------------------------------------------


def _register_consume(commands: Any) -> None:
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
    parser.add_argument("--limit", type=positive_int, metavar="N", help="handle at most N messages")
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="K",
        help="run up to K commands at once (1)",
    )
    parser.add_argument(
        "--lease", type=positive_number, default=300.0, metavar="S",
        help="seconds a message is held before another consumer may take it (300)",
    )  # fmt: skip
    parser.add_argument(
        "--max-attempts", type=positive_int, default=5, metavar="N",
        help="failures after which a message becomes a dead letter (5)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-delay", type=positive_number, default=10.0, metavar="S",
        help="seconds before the first retry; doubled at each failure, at most an hour (10)",
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
