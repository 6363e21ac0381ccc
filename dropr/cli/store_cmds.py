"""dropr store: administration of a server's store."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._common import CommandError, emit_json, minutes

if TYPE_CHECKING:
    from ..store import Message, Store


def register(commands: Any) -> None:
    """Add ``store`` to the ``dropr`` command."""
    parser = commands.add_parser(
        "store",
        help="inspect and clean a server's store",
        description="Inspect and clean a server's store. Lists print one message a line: "
        "channel, id, priority, client, time (UTC), size in bytes, tab separated.",
    )
    parser.add_argument("dir", metavar="DIR", help="the store directory")
    parser.set_defaults(group=None)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(
        name: str, run: Callable[[argparse.Namespace], int], help: str, json: bool = False, group: bool = True
    ) -> Any:
        sub = actions.add_parser(name, help=help, description=help)
        if json:
            sub.add_argument("--json", action="store_true", help="print JSON")
        if group:
            sub.add_argument("--group", metavar="G", help="a consumer group of the channel (default: its own queue)")
        sub.set_defaults(run=run, group=None)
        return sub

    action("channels", _channels, "the channels that have received messages", json=True, group=False)
    for state in ("queued", "processed"):
        action(f"count-{state}", _counter(state), f"how many {state} messages a channel has").add_argument(
            "channel", metavar="CH", help="the channel"
        )
        action(
            f"list-{state}",
            _lister(state),
            f"the {state} messages (of every channel, or of CH...)",
            json=True,
        ).add_argument("channel", metavar="CH", nargs="*", help="the channels (default: all)")
        action(
            f"sum-{state}",
            _summer(state),
            f"{state} messages per channel, then the total",
            json=True,
        )
    wipe = action(
        "wipe-processed",
        _wipe,
        "remove a channel's messages processed MINUTES ago or earlier (its groups' too)",
        group=False,
    )
    wipe.add_argument("channel", metavar="CH", help="the channel")
    wipe.add_argument("minutes", metavar="MINUTES", type=minutes, help="the age in minutes")
    wipe_all = action(
        "wipe-all-processed",
        _wipe,
        "remove every channel's messages processed MINUTES ago or earlier",
        group=False,
    )
    wipe_all.add_argument("minutes", metavar="MINUTES", type=minutes, help="the age in minutes")
    wipe_all.set_defaults(channel=None)
    dead = action(
        "list-dead",
        _list_dead,
        "a channel's dead letters, with attempts and last reason",
        json=True,
    )
    dead.add_argument("channel", metavar="CH", help="the channel")
    requeue = action(
        "requeue-dead",
        _requeue_dead,
        "put a channel's dead letters (all, or these ids) back in its queue",
    )
    requeue.add_argument("channel", metavar="CH", help="the channel")
    requeue.add_argument("ids", metavar="ID", nargs="*", help="message ids (default: every dead letter)")
    status = action(
        "status", _status, "the state of message ID: queued, claimed, delayed, processed or dead (exit 1: unknown)"
    )
    status.add_argument("channel", metavar="CH", help="the channel")
    status.add_argument("id", metavar="ID", help="the message id")
    groups = action("groups", _groups, "the consumer groups of a channel", json=True, group=False)
    groups.add_argument("channel", metavar="CH", help="the channel")
    for name, run, help in (
        ("subscribe", _subscribe, "make G a consumer group of CH: every message stored from now on goes to each group"),
        ("unsubscribe", _unsubscribe, "remove the consumer group G of CH, with the messages it holds"),
    ):
        change = action(name, run, help, group=False)
        change.add_argument("channel", metavar="CH", help="the channel")
        change.add_argument("name", metavar="G", help="the group")


def _open(args: argparse.Namespace, channels: Iterable[str] = ()) -> Store:
    """The store of ``args.dir``; CommandError if it is missing or lacks one of ``channels``
    (or the ``--group`` asked for)."""
    from ..store import Store

    store = Store(args.dir)
    for channel in channels:
        if not store.has_channel(channel):
            raise CommandError(f"no channel {channel!r} in store {store.path}")
        if args.group is not None and args.group not in store.groups(channel):
            raise CommandError(f"channel {channel!r} has no group {args.group!r}")
    return store


def _channels(args: argparse.Namespace) -> int:
    names = _open(args).channels()
    if args.json:
        emit_json(names)
    else:
        for name in names:
            print(name)
    return 0


def _count_of(store: Store, state: str, channel: str, group: str | None) -> int:
    if state == "queued":
        return int(store.count_queued(channel, group=group))
    return int(store.count_processed(channel, group=group))


def _counter(state: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        store = _open(args, [args.channel])
        print(_count_of(store, state, args.channel, args.group))
        return 0

    return run


def _summer(state: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        store = _open(args)
        channels = [c for c in store.channels() if args.group is None or args.group in store.groups(c)]
        counts = {channel: _count_of(store, state, channel, args.group) for channel in channels}
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
            if args.group is not None and not args.channel and args.group not in store.groups(channel):
                continue
            group = args.group
            found = store.messages(channel, group=group) if state == "queued" else store.processed(channel, group=group)
            rows += _rows(found)
        _print_rows(rows, args.json)
        return 0

    return run


def _list_dead(args: argparse.Namespace) -> int:
    store = _open(args, [args.channel])
    rows = []
    for message in store.dead_letters(args.channel, group=args.group):
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
    print(store.requeue_dead(args.channel, args.ids or None, group=args.group))
    return 0


def _status(args: argparse.Namespace) -> int:
    from .._impl import codec

    if not codec.is_message_id(args.id):
        raise CommandError(f"not a message id: {args.id!r}")
    store = _open(args, [args.channel] if args.group is not None else [])
    state = store.status(args.channel, args.id, group=args.group)
    if state is None:
        print(f"dropr: no message {args.id} in channel {args.channel!r}", file=sys.stderr)
        return 1
    print(state)
    return 0


def _groups(args: argparse.Namespace) -> int:
    names = _open(args, [args.channel]).groups(args.channel)
    if args.json:
        emit_json(names)
    else:
        for name in names:
            print(name)
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    made = _open(args).subscribe(args.channel, args.name)
    print("subscribed" if made else "subscribed already")
    return 0


def _unsubscribe(args: argparse.Namespace) -> int:
    _open(args).unsubscribe(args.channel, args.name)
    print("unsubscribed")
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
            size = os.stat(message.path).st_size if message.whole_file() else len(message.read())
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
