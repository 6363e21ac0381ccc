"""The relay's Prometheus metrics: ``dropr-relay --metrics HOST:PORT`` serves them at ``/metrics``.

Per peer (label ``peer``, its URL): messages and bytes queued and the age of the oldest, from
a count of the queue's names (the compiled tally) on a thread of its own every
:data:`COUNT_SECONDS` or more, never on a scrape or on the relay's loop; and from the
relay's published status (:mod:`.status`) what it delivered, failed and retried, the latency
of its batches and whether it is backing off. prometheus_client's own HTTP server thread
answers the scrapes; a scrape reads two dicts that the loop and the count replace whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .._impl import codec, scan
from .status import BACKING_OFF, RelayStatus

COUNT_SECONDS = 5.0
"""The least time between two counts of the queue."""
COUNT_SHARE = 0.05
"""At most this share of a core goes to counting: a count that took longer waits longer.
(A count reads every name: 0.45 s for a million queued here, 0.07 s of it in user space, the
rest the kernel reading the directories; the plain-Python twin takes 1.5 s.)"""

Tally = dict[str, tuple[int, int, str]]


class QueueCount:
    """The queue tallied by peer URL (``resolve``: field to URL), again and again on a thread."""

    def __init__(self, queue_dir: str, resolve: Callable[[str], str]) -> None:
        self.tally: Tally = {}
        """The last count: per peer URL, messages, bytes and the oldest id."""
        self._queue_dir = queue_dir
        self._resolve = resolve
        self._urls: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropr-relay-count", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def count(self) -> float:
        """Count the queue once; returns how long it took."""
        started = time.monotonic()
        tally: Tally = {}
        for field, counted in scan.tally_queue(self._queue_dir).items():
            tally[self._url(field)] = counted
        self.tally = tally
        return time.monotonic() - started

    def _url(self, field: str) -> str:
        url = self._urls.get(field)
        if url is None:
            try:
                url = self._urls[field] = self._resolve(field)
            except (OSError, ValueError):
                return field
        return url

    def _run(self) -> None:
        while True:
            try:
                took = self.count()
            except OSError:
                took = 0.0
            if self._stop.wait(max(COUNT_SECONDS, took / COUNT_SHARE)):
                return


class RelayCollector(Collector):
    """The metric families of one scrape, from ``status`` and ``count``."""

    def __init__(self, status: RelayStatus, count: QueueCount) -> None:
        self._status = status
        self._count = count

    def collect(self) -> Iterator[Any]:
        now = time.time()
        snapshot = self._status.snapshot
        tally = self._count.tally
        queued = GaugeMetricFamily("dropr_relay_queued_messages", "Messages queued for the peer.", labels=["peer"])
        size = GaugeMetricFamily("dropr_relay_queued_bytes", "Bytes queued for the peer.", labels=["peer"])
        oldest = GaugeMetricFamily(
            "dropr_relay_oldest_message_age_seconds", "Age of the oldest message queued for the peer.", labels=["peer"]
        )
        peers = snapshot["peers"]
        for url in sorted(tally.keys() | peers.keys()):
            messages, total, oldest_id = tally.get(url, (0, 0, ""))
            queued.add_metric([url], messages)
            size.add_metric([url], total)
            if oldest_id:
                oldest.add_metric([url], max(0.0, now - codec.id_time_ns(oldest_id) / 1e9))
        yield from (queued, size, oldest)
        for name, key, text in (
            ("dropr_relay_delivered", "delivered", "Messages the peer acknowledged."),
            ("dropr_relay_failed", "failed", "Messages moved to failed/ (rejected by the peer, expired, unusable)."),
            ("dropr_relay_retried", "retried", "Messages sent and left queued for another try."),
        ):
            family = CounterMetricFamily(name, text, labels=["peer"])
            for url, record in peers.items():
                family.add_metric([url], record[key])
            yield family
        backing_off = GaugeMetricFamily(
            "dropr_relay_backing_off", "1 while the peer is backed off after failures.", labels=["peer"]
        )
        inflight = GaugeMetricFamily(
            "dropr_relay_requests_in_flight", "Requests to the peer in flight.", labels=["peer"]
        )
        latency = HistogramMetricFamily(
            "dropr_relay_batch_seconds", "Time from sending a batch to its answer.", labels=["peer"]
        )
        bounds = [*(f"{bound:g}" for bound in snapshot["latency_buckets"]), "+Inf"]
        for url, record in peers.items():
            backing_off.add_metric([url], 1 if record["state"] == BACKING_OFF else 0)
            inflight.add_metric([url], record["inflight"])
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, record["latency_counts"], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([url], buckets, record["latency_sum"])
        yield from (backing_off, inflight, latency)


class MetricsServer:
    """``/metrics`` on ``address`` for the relay of ``status``, counting ``queue_dir``."""

    def __init__(
        self, address: tuple[str, int], status: RelayStatus, queue_dir: str, resolve: Callable[[str], str]
    ) -> None:
        self.count = QueueCount(queue_dir, resolve)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RelayCollector(status, self.count))
        host, port = address
        self._server, self._thread = start_http_server(port, host, registry)
        self.count.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self.count.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
