"""The server's token: what an ``Authorization`` header must carry when one is set.

Batches and the consumer side take the bearer header; the status page, opened in a browser,
takes HTTP Basic as well, with the token as the password (any user name). Header bytes that
are not UTF-8 reach the server as surrogates: the bytes sent are compared, in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac


class Token:
    """The token a request must carry; None: every request is let in."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token is not None else None

    @property
    def required(self) -> bool:
        return self._token is not None

    def problem(self, header: str, *, basic: bool = False) -> str:
        """Why the ``Authorization`` header ``header`` does not let the request in; "" when it does.
        ``basic``: HTTP Basic with the token as the password is taken too."""
        if self._token is None:
            return ""
        scheme, _, given = header.partition(" ")
        scheme = scheme.lower()
        if basic and scheme == "basic" and given:
            try:
                decoded = base64.b64decode(given.strip().encode("utf-8", "surrogateescape"), validate=True)
            except (binascii.Error, ValueError):
                return "malformed basic credentials"
            password = decoded.partition(b":")[2]
            return "" if hmac.compare_digest(password, self._token) else "wrong token"
        if scheme != "bearer" or not given:
            return "a bearer token is required" if not basic else "the token is required"
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._token):
            return "wrong token"
        return ""
