"""The relay: forwards a spool's queue to its peers (``dropr-relay``).

``daemon`` is the worker loop, which wires together ``policy`` (what to scan next),
``delivery`` (peers, batches, requests, answers) and ``disposal`` (sent, failed, expired,
the chores); ``supervisor`` is the restarting parent. ``http`` and ``local`` are the
transports (``transport`` their interface); ``batches``, ``backoff``, ``inotify``, ``lock``
and ``housekeeping`` (the directory passes) the parts they share. Importing this package
loads none of them: a producer never pays for pycurl or asyncio.
"""
