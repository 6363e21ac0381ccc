"""The exceptions dropr raises. Every one carries a reason a person can act on."""


class DroprError(Exception):
    """Base class of every error dropr raises on purpose."""


class InvalidMessage(DroprError, ValueError):
    """A payload, channel, priority or peer that dropr refuses; nothing was written."""


class SpoolError(DroprError, OSError):
    """The spool cannot take the message (unwritable, missing, full disk); nothing is visible."""


class StoreError(DroprError, OSError):
    """The store cannot be read or changed as asked."""
