"""The server's status page (``GET /status``): what a person wants to see at a glance.

Each channel, and each consumer group of one, with its messages per state and the age of its
oldest queued one (counted from the store on each view, off the event loop), the clients
seen since the server started and when each last sent, and the messages in and out of each
over the last minute. One HTML document, its style inline, no script and nothing fetched
from elsewhere; it reloads itself every :data:`REFRESH_SECONDS`. Every text from a request
or the store is escaped.

"In" is what this server newly stored, counted as it answers. "Out" is what left the
channel's pending states (queued, claimed, delayed) for good — processed or dead — whoever
did it: the census taken every :data:`SAMPLE_SECONDS` (or less often when counting takes
long) gives the pending count a minute ago, and out = in - (pending now - pending then).
"""

from __future__ import annotations

import asyncio
import collections
import html
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from .metrics import ChannelCensus

REFRESH_SECONDS = 5
WINDOW_SECONDS = 60.0
SAMPLE_SECONDS = 5.0
SAMPLE_SHARE = 0.05
"""At most this share of a core goes to the census behind "out": a slow count waits longer."""
PENDING = ("queued", "claimed", "delayed")
STATES = ("queued", "claimed", "delayed", "dead", "processed")
"""The states the page shows, in its columns' order."""
CLIENTS_SHOWN = 200
CLIENTS_KEPT = 10_000


class Client(NamedTuple):
    address: str
    last_sent: float
    stored: int


class Sample(NamedTuple):
    at: float
    pending: dict[tuple[str, str], int]
    """Per channel and group ("" for the channel's own queue)."""
    arrived: dict[str, int]


class Activity:
    """What the server saw: clients and arrivals, fed by the handlers (the loop thread), and
    censuses of the store over the last minute, from :meth:`run`."""

    def __init__(self) -> None:
        self.started = time.time()
        self.clients: dict[str, Client] = {}
        self.arrived: collections.Counter[str] = collections.Counter()
        """Messages newly stored since the start, per channel."""
        self._samples: collections.deque[Sample] = collections.deque()

    def received(self, client: str, address: str, stored: Mapping[str, int]) -> None:
        """A batch from ``client`` at ``address`` was answered: ``stored`` new messages per channel."""
        self.arrived.update(stored)
        earlier = self.clients.pop(client, None)
        self.clients[client] = Client(address, time.time(), sum(stored.values()) + (earlier.stored if earlier else 0))
        if len(self.clients) > CLIENTS_KEPT:  # the least recently seen half goes (dicts keep insertion order)
            for gone in list(self.clients)[: CLIENTS_KEPT // 2]:
                del self.clients[gone]

    def sampled(self, census: list[ChannelCensus], now: float) -> None:
        """Keep ``census``, taken at ``now``, for a minute (and the one before, to reach back a minute)."""
        pending = {
            (channel, group): sum(counts.get(state, 0) for state in PENDING) for channel, group, counts, _ in census
        }
        self._samples.append(Sample(now, pending, dict(self.arrived)))
        while len(self._samples) > 1 and self._samples[1].at <= now - WINDOW_SECONDS:
            self._samples.popleft()

    def last_minute(
        self, census: list[ChannelCensus], now: float
    ) -> tuple[float, dict[tuple[str, str], tuple[int, int]]]:
        """The span looked back over (a minute, or since the first sample) and per channel and
        group the messages in (each group of a channel gets each of its messages) and out over it."""
        if not self._samples:
            return 0.0, {}
        then = self._samples[0]
        flow = {}
        for channel, group, counts, _ in census:
            came = self.arrived[channel] - then.arrived.get(channel, 0)
            pending = sum(counts.get(state, 0) for state in PENDING)
            flow[channel, group] = (came, max(0, came - (pending - then.pending.get((channel, group), 0))))
        return now - then.at, flow

    async def run(self, count: Callable[[], list[ChannelCensus]]) -> None:
        """Take a census with ``count`` (on a thread) every :data:`SAMPLE_SECONDS` or more, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = time.monotonic()
            try:
                census = await loop.run_in_executor(None, count)
            except OSError:
                census = None
            took = time.monotonic() - started
            if census is not None:
                self.sampled(census, time.time())
            await asyncio.sleep(max(SAMPLE_SECONDS, took / SAMPLE_SHARE))


def render(store_path: str, census: list[ChannelCensus], activity: Activity, now: float) -> str:
    """The page for ``census`` and ``activity`` at ``now``."""
    span, flow = activity.last_minute(census, now)
    window = f"last {span:.0f} s" if span else "since the start"
    head = "".join(f"<th>{state}</th>" for state in STATES)
    rows = []
    for channel, group, counts, oldest in census:
        came, left = flow.get((channel, group), (0, 0))
        cells = "".join(f"<td>{counts.get(state, 0):,}</td>" for state in STATES)
        age = "–" if oldest is None else _age(now - oldest)
        name, row = (f"{_e(channel)} · group {_e(group)}", f' data-group="{_e(group)}"') if group else (_e(channel), "")
        rows.append(
            f'<tr data-channel="{_e(channel)}"{row}><td class="name">{name}</td>{cells}'
            f"<td>{age}</td><td>{came:,}</td><td>{left:,}</td></tr>"
        )
    channels = "\n".join(rows) or f'<tr><td colspan="{len(STATES) + 4}">no channel has received messages</td></tr>'
    seen = sorted(activity.clients.items(), key=lambda item: -item[1].last_sent)[:CLIENTS_SHOWN]
    clients = (
        "\n".join(
            f'<tr data-client="{_e(client)}"><td class="name">{_e(client)}</td><td>{_e(info.address)}</td>'
            f"<td>{_age(now - info.last_sent)} ago</td><td>{info.stored:,}</td></tr>"
            for client, info in seen
        )
        or '<tr><td colspan="4">no client has sent since the start</td></tr>'
    )
    total_in = sum(came for (_, group), (came, _) in flow.items() if not group)  # a group's came in once
    total_out = sum(left for _, left in flow.values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>dropr-server status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: right; }}
th {{ background: #f3f3f3; }}
td.name {{ text-align: left; font-family: ui-monospace, monospace; }}
</style></head>
<body>
<h1>dropr-server</h1>
<p>Store <code>{_e(store_path)}</code>, up {_age(now - activity.started)}; in the {window}:
<span id="in">{total_in:,}</span> messages in, <span id="out">{total_out:,}</span> out.
This page reloads every {REFRESH_SECONDS} s.</p>
<h2>Channels</h2>
<table id="channels">
<tr><th>channel</th>{head}<th>oldest queued</th><th>in ({window})</th><th>out ({window})</th></tr>
{channels}
</table>
<h2>Clients</h2>
<table id="clients">
<tr><th>client</th><th>address</th><th>last sent</th><th>stored since the start</th></tr>
{clients}
</table>
</body></html>
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
