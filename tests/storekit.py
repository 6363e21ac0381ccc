"""What the store, ingest, claim and consume tests share: putting messages into a store the
way the server does (a staged file handed to ``Store.ingest``), and a consumer process to run.

Run as a script, it is one consumer process::

    python storekit.py STORE CHANNEL OUT BATCH LEASE [HOLD]

STORE is a store directory, or a server's URL (``http://…``: a RemoteStore, with the token
of ``$DROPR_TOKEN``).

It claims batches of BATCH messages until the queue is empty (and, if the file ``OUT.go-on``
exists, keeps waiting for it to vanish, then looks once more), appending each claimed name to OUT in the
order it was claimed, one name a line, flushed before the message is marked processed. With
HOLD it claims one batch, writes OUT and then sleeps, holding its claims until killed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dropr._impl import codec
from dropr.remote import RemoteStore
from dropr.store import Store

CLIENT = "tester"


def stage(store: Store, payload: bytes = b"payload") -> str:
    """A complete file in the store's staging directory, as an upload leaves it."""
    path = os.path.join(store.staging_dir, os.urandom(6).hex())
    Path(path).write_bytes(payload)
    return path


def put(
    store: Store,
    payload: bytes,
    channel: str = "common",
    priority: int = 9,
    client: str = CLIENT,
    msg_id: str | None = None,
) -> str:
    """Ingest ``payload`` as a new message (or as ``msg_id``); returns its id."""
    msg_id = msg_id or codec.new_id()
    assert store.ingest(channel, client, msg_id, priority, stage(store, payload))
    return msg_id


def tree(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file under ``root`` with its content, by relative path."""
    files = {}
    for top, _, names in os.walk(root):
        for name in names:
            path = Path(top, name)
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


def consume(store_dir: str, channel: str, out: str, batch: int, lease: float, hold: bool) -> None:
    store: Store | RemoteStore
    if store_dir.startswith("http"):
        store = RemoteStore(store_dir, token=os.environ.get("DROPR_TOKEN"))
    else:
        store = Store(store_dir)
    go_on = Path(out + ".go-on")
    last_look = False
    with open(out, "a") as log:
        while True:
            claimed = store.claim(channel, batch, lease)
            if hold:
                log.write("".join(m.name + "\n" for m in claimed))
                log.flush()
                time.sleep(3600)
            if not claimed:
                if go_on.exists():
                    time.sleep(0.01)
                elif last_look:
                    return
                last_look = not go_on.exists()
                continue
            for message in claimed:
                message.read()
                log.write(message.name + "\n")
            log.flush()
            for message in claimed:
                store.set_processed(message)


if __name__ == "__main__":
    consume(
        sys.argv[1],
        sys.argv[2],
        sys.argv[3],
        int(sys.argv[4]),
        float(sys.argv[5]),
        len(sys.argv) > 6,
    )
