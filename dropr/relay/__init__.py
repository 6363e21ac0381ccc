"""The relay: forwards a spool's queue to its peers (``dropr-relay``).

``daemon`` is the worker loop, which wires together ``policy`` (what to scan next),
``delivery`` (peers, batches, requests, answers) and ``disposal`` (sent, failed, expired,
the chores); ``supervisor`` is the restarting parent. ``http``, ``local`` and ``nats`` are
the transports and ``group`` the peer groups over them (``transport`` their interface and
the one place that picks a peer's transport by its scheme); ``batches``, ``backoff``,
``inotify``, ``lock`` and ``housekeeping`` (the directory passes) the parts they share.
Importing this package loads none of them: a producer never pays for pycurl, nats-py or
asyncio.
"""
