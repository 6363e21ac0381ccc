"""dropr spool DIR status: per peer what is queued and, while a relay runs, what it is doing.

The queue is counted by the compiled tally of its names (no Python work per message); what
the relay is doing comes from the status file it publishes (``dropr.relay.status``), read
only while the spool's lock shows that relay running.
"""

from __future__ import annotations

import argparse
import datetime
import time
from typing import Any

from .._impl import codec, scan
from ..relay import lock
from ..relay import status as _status
from ..spool import Spool
from ._common import emit_json

COLUMNS = ("peer", "queued", "bytes", "oldest_seconds", "state", "delivered", "failed", "retried", "inflight", "detail")
_ONE_LINE = str.maketrans("\t\n\r", "   ")


def report(spool: Spool, now: float) -> dict[str, Any]:
    """The spool's status: ``relay`` (None when none runs) and ``peers``, one record each."""
    peers: dict[str, dict[str, Any]] = {}
    for field, (messages, size, oldest) in scan.tally_queue(spool.queue_dir).items():
        url = _url(spool, field)
        age = max(0.0, now - codec.id_time_ns(oldest) / 1e9)
        peers[url] = {"peer": url, "queued": messages, "bytes": size, "oldest_seconds": round(age, 3)}
    relay = _relay(spool)
    for url, record in (relay or {}).get("peers", {}).items():
        peers.setdefault(url, {"peer": url, "queued": 0, "bytes": 0, "oldest_seconds": None})["relay"] = record
    head = None if relay is None else {key: value for key, value in relay.items() if key != "peers"}
    return {"relay": head, "peers": sorted(peers.values(), key=lambda record: record["peer"])}


def _url(spool: Spool, field: str) -> str:
    try:
        return spool.resolve(field)
    except (OSError, ValueError):
        return field


def _relay(spool: Spool) -> dict[str, Any] | None:
    """What the running relay published, or a record of its pid alone; None when none runs."""
    pid = lock.holder(spool.path)
    if pid is None:
        return None
    published = _status.read(spool.path)
    if published is None or published.get("pid") != pid or not isinstance(published.get("peers"), dict):
        return {"pid": pid, "updated": None, "peers": {}}
    return published


def run(args: argparse.Namespace, spool: Spool) -> int:
    now = time.time()
    status = report(spool, now)
    if args.json:
        emit_json(status)
        return 0
    print(_relay_line(status["relay"], now))
    print("\t".join(COLUMNS))
    for record in status["peers"]:
        state = record.get("relay")
        oldest = record["oldest_seconds"]
        row = [record["peer"], record["queued"], record["bytes"], "-" if oldest is None else f"{oldest:.1f}"]
        if state is None:
            row += ["-"] * 6
        else:
            row += [state["state"], state["delivered"], state["failed"], state["retried"], state["inflight"]]
            row.append(_detail(state, now))
        print("\t".join(str(value).translate(_ONE_LINE) for value in row))
    return 0


def _relay_line(relay: dict[str, Any] | None, now: float) -> str:
    if relay is None:
        return "relay: not running"
    line = f"relay: running, pid {relay['pid']}"
    if relay.get("updated") is None:
        return line + ", no status published yet"
    return (
        line
        + f", client {relay.get('client')}, status of {_when(relay['updated'])} ({now - relay['updated']:.1f} s ago)"
    )


def _detail(state: dict[str, Any], now: float) -> str:
    text = f"since {_when(state['since'])}"
    if state["state"] == _status.BACKING_OFF:
        text += f", until {_when(state['until'])} (in {max(0.0, state['until'] - now):.1f} s)"
    if state["state"] in (_status.BACKING_OFF, _status.GIVEN_UP):
        text += f", {state['failures']} failures: {state['reason']}"
    elif state["state"] == _status.HELD:
        text += f": {state['reason']}"
    elif state.get("last_batch_seconds") is not None:
        text += f", last batch {state['last_batch_seconds']:.3f} s"
    return text


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")
