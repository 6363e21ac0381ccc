"""The exceptions dropr raises. Every one carries a reason a person can act on."""


class DroprError(Exception):
    """Base class of every error dropr raises on purpose."""


class InvalidMessage(DroprError, ValueError):
    """A payload, channel, priority or peer that dropr refuses; nothing was written."""


class _ReasonOSError(DroprError, OSError):
    """An OSError that keeps its errno but reads as its reason alone."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class SpoolError(_ReasonOSError):
    """The spool cannot take the message (unwritable, missing, full disk); nothing is visible."""


class StoreError(_ReasonOSError):
    """The store cannot be read or changed as asked."""
