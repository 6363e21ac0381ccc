"""The receiving HTTP server (aiohttp on uvloop): batches in, acknowledgements out.

Imported only by ``dropr-server`` and by code that embeds the server; ``import dropr``
never loads it (nor aiohttp or uvloop).
"""

from __future__ import annotations

from .app import DEFAULT_MAX_REQUEST, ServerConfig, make_app
from .run import listen, serve

__all__ = ["DEFAULT_MAX_REQUEST", "ServerConfig", "listen", "make_app", "serve"]
