"""The server's Prometheus metrics, in a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..protocol import DUPLICATE, REJECTED, RETRY, STORED

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Counters of messages and requests, and the latency of batches."""

    def __init__(self) -> None:
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

    def count_acks(self, statuses: Iterable[str]) -> None:
        for status in statuses:
            self.by_status[status].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
