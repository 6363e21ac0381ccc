"""The server's Prometheus metrics, in a registry of its own (no process-global state).

Beside the counters of requests and messages, gauges per channel, and per consumer group of
a channel, of what the store holds: messages in each state and the age of the oldest queued
one, read from the store on each scrape (:func:`census`: counts of names, in C), so a scrape
is rendered off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..protocol import DUPLICATE, REJECTED, RETRY, STORED
from ..store.consumer import ConsumerSide

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ChannelCensus(NamedTuple):
    """What a store holds for one channel, or one consumer group of it: messages per state,
    and when its oldest queued one was put."""

    channel: str
    group: str
    """The consumer group; "" for the channel's own queue."""
    counts: dict[str, int]
    oldest: float | None


def census(store: ConsumerSide) -> list[ChannelCensus]:
    """Each channel of ``store`` and each of its groups, counted (blocking: a directory read
    per state)."""
    found = []
    for channel in store.channels():
        for group in ("", *store.groups(channel)):
            counts = store.counts(channel, group=group or None)
            found.append(ChannelCensus(channel, group, counts, store.oldest_queued(channel, group=group or None)))
    return found


class StoreCollector(Collector):
    """The gauges of ``store``'s channels, counted at each scrape."""

    def __init__(self, store: ConsumerSide) -> None:
        self._store = store

    def describe(self) -> Iterator[Any]:
        """The families without samples: registering counts nothing."""
        return iter(self._families())

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "dropr_store_messages", "Messages the store holds, per channel and state.", labels=["channel", "state"]
            ),
            GaugeMetricFamily(
                "dropr_store_oldest_queued_age_seconds",
                "Age of the channel's oldest queued message.",
                labels=["channel"],
            ),
            GaugeMetricFamily(
                "dropr_store_group_messages",
                "Messages a consumer group of a channel holds, per state.",
                labels=["channel", "group", "state"],
            ),
            GaugeMetricFamily(
                "dropr_store_group_oldest_queued_age_seconds",
                "Age of the oldest message queued for a consumer group of a channel.",
                labels=["channel", "group"],
            ),
        ]

    def collect(self) -> Iterator[Any]:
        families = self._families()
        now = time.time()
        for channel, group, counts, put_time in census(self._store):
            messages, oldest = families[2:] if group else families[:2]
            labels = [channel, group] if group else [channel]
            for state, count in counts.items():
                messages.add_metric([*labels, state], count)
            if put_time is not None:
                oldest.add_metric(labels, max(0.0, now - put_time))
        yield from families


class Metrics:
    """Counters of messages and requests, the latency of batches, and the store's gauges."""

    def __init__(self, store: ConsumerSide) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("dropr_messages_received", "Messages announced in requests.", registry=r)
        self.by_status = {
            STORED: Counter("dropr_messages_stored", "Messages newly stored.", registry=r),
            DUPLICATE: Counter("dropr_messages_duplicate", "Messages already held, acknowledged again.", registry=r),
            REJECTED: Counter("dropr_messages_rejected", "Messages refused for good.", registry=r),
            RETRY: Counter("dropr_messages_retry", "Messages announced but not sent in full.", registry=r),
        }
        self.bytes = Counter("dropr_bytes_received", "Payload bytes received in file parts.", registry=r)
        self.requests = Counter("dropr_requests", "POST requests by HTTP status.", ["status"], registry=r)
        self.latency = Histogram(
            "dropr_batch_seconds",
            "Time from the start of a POST to its answer.",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        r.register(StoreCollector(store))

    def count_acks(self, statuses: Mapping[str, int]) -> None:
        """Count a batch's answers: how many messages got each status."""
        for status, count in statuses.items():
            self.by_status[status].inc(count)

    def render(self) -> bytes:
        """The text of a scrape; blocks while the store is counted."""
        return generate_latest(self.registry)
