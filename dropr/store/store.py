"""The store as one object: its ingest side and its consumer side over one directory."""

from __future__ import annotations

from .consumer import ConsumerSide
from .ingest import IngestSide


class Store(ConsumerSide, IngestSide):
    """A store directory (see :mod:`dropr.store.layout`); ``create`` makes a missing one.

    Everything a consumer does (:class:`~dropr.store.consumer.ConsumerSide`: claims,
    outcomes, dead letters, counts, wiping) and what the server and the local transport do
    (:class:`~dropr.store.ingest.IngestSide`: the one ingest path and its steps). Safe to
    use from several processes at once: the server ingesting while consumers claim.
    """
