"""The relay: forwards a spool's queue to its peers (``dropr-relay``).

``daemon`` is the worker loop, ``supervisor`` the restarting parent; ``http`` and ``local``
are the transports, ``batches``, ``backoff``, ``inotify``, ``lock`` and ``housekeeping``
the parts they share. Importing this package loads none of them: a producer never pays
for pycurl or asyncio.
"""
