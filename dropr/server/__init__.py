"""The receiving HTTP server (aiohttp on uvloop): batches in, acknowledgements out.

Only ``dropr-server`` and code that embeds the server import it; ``import dropr`` never
loads it. This package's own import is cheap: aiohttp is loaded by the modules that serve
(:mod:`.app`, :mod:`.receive`, :mod:`.run`), the names below on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import DEFAULT_MAX_REQUEST, ServerConfig, make_app
    from .run import listen, serve

__all__ = ["DEFAULT_MAX_REQUEST", "ServerConfig", "listen", "make_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("DEFAULT_MAX_REQUEST", "ServerConfig", "make_app"):
        from . import app

        return getattr(app, name)
    if name in ("listen", "serve"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'dropr.server' has no attribute {name!r}")
