"""dropr put and dropr spool: the producer side from the shell."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Iterator
from typing import Any

from .. import limits as _limits
from .._files import DIR_MODE
from .._impl import codec, scan
from ..errors import InvalidMessage
from ..limits import DEFAULT_CHANNEL, DEFAULT_PRIORITY
from ..names import check_channel, check_delay, check_peer, check_priority
from ..spool import Client, Spool, SpoolMessage
from . import spool_status
from ._common import CommandError, emit_json, minutes

_ONE_LINE = str.maketrans("\t\n\r", "   ")
_BUCKET_ATTEMPTS = 5


def register(subparsers: Any) -> None:
    """Add the ``put`` and ``spool`` commands to ``dropr``."""
    text = "queue one message in a spool; prints its id"
    put = subparsers.add_parser("put", help=text, description=text)
    put.add_argument(
        "--spool",
        default=os.environ.get("DROPR_SPOOL"),
        metavar="DIR",
        help="the spool directory (default: $DROPR_SPOOL)",
    )
    put.add_argument(
        "--peer",
        required=True,
        help="where to deliver: http://host:port/path, https://..., file:///path, nats://host:port[,...] or group:NAME",
    )
    put.add_argument("--channel", default=DEFAULT_CHANNEL, help="the channel")
    put.add_argument("--priority", type=int, default=DEFAULT_PRIORITY, help="0 (delivered first) to 9")
    put.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds after now before a consumer may take it (it is relayed and stored at once)",
    )
    put.add_argument("--sync", action="store_true", help="return only once the message is on disk")
    put.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="the payload (default: standard input)")
    put.set_defaults(run=run_put)

    text = "inspect and tidy a spool"
    spool = subparsers.add_parser("spool", help=text, description=text)
    spool.add_argument("spool", metavar="DIR", help="the spool directory")
    actions = spool.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, sub, text in (
        ("count-queued", "queue", "the number of queued messages"),
        ("count-sent", "sent", "the number of sent messages kept"),
    ):
        actions.add_parser(name, help=text, description=text).set_defaults(run=run_count, sub=sub)
    text = "remove sent messages put more than MINUTES ago"
    wipe = actions.add_parser("wipe-sent", help=text, description=text)
    wipe.add_argument("minutes", type=minutes, metavar="MINUTES", help="the age in minutes")
    wipe.set_defaults(run=run_wipe_sent)
    text = "move messages kept in sent/ back into the queue, to be sent again; prints how many"
    resend = actions.add_parser("resend", help=text, description=text)
    resend.add_argument(
        "--since",
        required=True,
        type=_iso_time,
        metavar="TIME",
        help="those acknowledged at or after TIME: ISO 8601, such as 2025-06-01T12:00 (local time without an offset)",
    )
    resend.set_defaults(run=run_resend)
    for name, run, text in (
        ("list", run_list, "queued messages in delivery order: id priority channel peer size time"),
        ("list-failed", run_list_failed, "failed messages: id priority channel peer size time reason"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--json", action="store_true", help="one JSON array of objects")
        action.set_defaults(run=run)
    text = "per peer, what is queued (messages, bytes, the oldest's age) and what the relay is doing"
    action = actions.add_parser("status", help=text, description=text)
    action.add_argument("--json", action="store_true", help="one JSON object")
    action.set_defaults(run=lambda args: spool_status.run(args, _open(args)))


def run_put(args: argparse.Namespace) -> int:
    if not args.spool:
        raise CommandError("no spool given: use --spool DIR or set DROPR_SPOOL")
    limits = _limits.DEFAULT
    check_peer(args.peer, limits)
    check_channel(args.channel, limits)
    priority = check_priority(args.priority)
    check_delay(args.delay)
    payload = _read_payload(args.file, limits.max_payload)
    with Client(args.spool, sync=args.sync, limits=limits) as client:
        print(client.put(payload, peer=args.peer, channel=args.channel, priority=priority, delay=args.delay))
    return 0


def run_count(args: argparse.Namespace) -> int:
    spool = _open(args)
    print(scan.count_queue(spool.queue_dir) if args.sub == "queue" else scan.count(spool.sent_dir))
    return 0


def run_wipe_sent(args: argparse.Namespace) -> int:
    print(_open(args).wipe_sent(args.minutes))
    return 0


def run_resend(args: argparse.Namespace) -> int:
    """Moves back into the queue what ``sent/`` kept (``--keep-sent``) from ``--since`` on.

    A file's change time is when it moved to ``sent/``: when its peer acknowledged it. Sent
    again, a message keeps its id, so a dropr server answers ``duplicate`` for what it holds
    and JetStream drops what it holds within its duplicate window.
    """
    spool = _open(args)
    since_ns = int(args.since.timestamp() * 1e9)
    moved = 0
    with os.scandir(spool.sent_dir) as entries:
        names = [entry.name for entry in entries if _acknowledged_since(entry, since_ns)]
    for name in sorted(names):
        if _requeue(spool, name):
            moved += 1
    print(moved)
    return 0


def _acknowledged_since(entry: os.DirEntry[str], since_ns: int) -> bool:
    if entry.name.startswith("."):
        return False
    try:
        codec.parse_spool_name(entry.name)
        return entry.stat(follow_symlinks=False).st_ctime_ns >= since_ns
    except (ValueError, FileNotFoundError):
        return False


def _requeue(spool: Spool, name: str) -> bool:
    """Renames ``sent/NAME`` into its bucket of the queue (made again if the relay removed it
    meanwhile); False when the file went away (its retention ended)."""
    source = os.path.join(spool.sent_dir, name)
    target = spool.queued_path(name)
    for _ in range(_BUCKET_ATTEMPTS):
        try:
            os.rename(source, target)
            return True
        except FileNotFoundError:
            if not os.path.exists(source):
                return False
        os.makedirs(os.path.dirname(target), DIR_MODE, exist_ok=True)
    raise CommandError(f"cannot move {name} back into the queue: its bucket keeps disappearing")


def _iso_time(text: str) -> datetime.datetime:
    """An argparse type: an ISO 8601 time, local when it has no offset."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"TIME must be an ISO 8601 time such as 2025-06-01T12:00, not {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def run_list(args: argparse.Namespace) -> int:
    spool = _open(args)
    # No limit: a limit counted beforehand would be filled by puts of a higher priority made
    # during the listing, leaving out messages queued all along.
    names = scan.scan_queue(spool.queue_dir, sys.maxsize)
    _emit(args, ((message, None) for message in _decoded(spool, names)))
    return 0


def run_list_failed(args: argparse.Namespace) -> int:
    _emit(args, _open(args).failed())
    return 0


def _open(args: argparse.Namespace) -> Spool:
    if not os.path.isdir(args.spool):
        raise CommandError(f"no such spool: {args.spool}")
    return Spool(args.spool, create=False)


def _decoded(spool: Spool, names: list[str]) -> Iterator[SpoolMessage]:
    for name in names:
        try:
            yield spool.decode(name)
        except ValueError:
            continue


def _read_payload(source: str, max_payload: int) -> bytes:
    if source == "-":
        data = sys.stdin.buffer.read(max_payload + 1)
    else:
        with open(source, "rb") as file:
            data = file.read(max_payload + 1)
    if len(data) > max_payload:
        raise InvalidMessage(f"payload is over the limit of {max_payload} bytes")
    return data


def _emit(args: argparse.Namespace, rows: Any) -> None:
    records = (_record(message, reason) for message, reason in rows)
    if args.json:
        emit_json(list(records))
        return
    for record in records:
        print("\t".join(str(value).translate(_ONE_LINE) for value in record.values()))


def _record(message: SpoolMessage, reason: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": message.id,
        "priority": message.priority,
        "channel": message.channel,
        "peer": message.peer,
        "size": message.size,
        "time": datetime.datetime.fromtimestamp(message.time, datetime.timezone.utc).isoformat(timespec="microseconds"),
    }
    if reason is not None:
        record["reason"] = reason
    return record
