"""dropr-server: receives batches over HTTP(S) into a store.

POST on any path delivers a batch; consumers claim and settle messages under /v1/; GET
/health and GET /metrics report. SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import gc
import os
import ssl
import sys
from collections.abc import Sequence

from ..errors import DroprError
from ._common import (
    EXIT_USAGE,
    CommandError,
    MissingExtra,
    Parser,
    listen_address,
    log_to,
    positive_int,
    positive_number,
    require,
    stderr_handler,
)

PROG = "dropr-server"
GC_THRESHOLD = (50_000, 20, 20)
"""When the server process's cyclic garbage collector runs (Python's default: 700, 10, 10).
A batch of 1,000 messages makes tens of thousands of short-lived objects, nearly all freed
by their reference counts; at the default the collector ran dozens of times a request,
every thread waiting, and took ~5% of the server's time (``bench/server.py --baseline``:
rate 1.08, CPU a message 0.90 with this threshold and start-up's objects frozen)."""
LEVELS = ("debug", "info", "warning", "error")
DEFAULT_MAX_REQUEST_TEXT = "64 MiB"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__)
    parser.add_argument("--store", required=True, metavar="DIR", help="the store directory, made if missing")
    parser.add_argument(
        "--listen",
        required=True,
        type=listen_address,
        metavar="HOST:PORT",
        help="the address to listen on; port 0: any free port",
    )
    parser.add_argument(
        "--token", help="the bearer token a request must carry (default: $DROPR_TOKEN; none: any request is let in)"
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (default: plain HTTP)")
    parser.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (default: none)")
    parser.add_argument(
        "--fsync",
        choices=("batch", "none"),
        default="batch",
        help="batch: flush the store to disk before each acknowledgement; none: never",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=positive_int,
        metavar="N",
        default=None,
        help=f"the largest request accepted, larger ones get 413 (default: {DEFAULT_MAX_REQUEST_TEXT})",
    )
    parser.add_argument(
        "--max-attempts", type=positive_int, default=5, metavar="N",
        help="failures (reported by consumers over the network) after which a message becomes a dead letter",
    )  # fmt: skip
    parser.add_argument(
        "--retry-delay", type=positive_number, default=10.0, metavar="S",
        help="seconds before a failed message is retried; doubled at each failure, at most an hour",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", type=str.lower, choices=LEVELS, default="info", help="log messages of this importance and above"
    )
    return parser


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CommandError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise CommandError(f"TLS file not found: {exc.filename or cert}") from None
    except (ssl.SSLError, OSError) as exc:
        raise CommandError(f"cannot load TLS certificate {cert} and key {key}: {exc}") from None
    return context


def run(args: argparse.Namespace) -> int:
    import uvloop

    from ..server import DEFAULT_MAX_REQUEST, ServerConfig, listen, make_app, serve
    from ..store import Store

    token = args.token if args.token is not None else os.environ.get("DROPR_TOKEN") or None
    if token is not None and not token.strip():
        raise CommandError("the token is empty")
    context = tls_context(args.tls_cert, args.tls_key)
    if os.path.exists(args.store) and not os.path.isdir(args.store):
        raise CommandError(f"store {args.store} is not a directory")
    host, port = args.listen
    try:
        sock = listen(host, port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        store = Store(args.store, create=True, max_attempts=args.max_attempts, retry_delay=args.retry_delay)
    except BaseException:
        sock.close()
        raise
    config = ServerConfig(
        token=token,
        fsync=args.fsync == "batch",
        max_request_bytes=args.max_request_bytes or DEFAULT_MAX_REQUEST,
    )
    app = make_app(store, config)
    gc.freeze()  # what start-up made lives as long as the process: no collection looks at it again
    gc.set_threshold(*GC_THRESHOLD)
    uvloop.run(serve(app, sock, context))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to(stderr_handler(PROG), args.log_level)
    try:
        require("server")
        return run(args)
    except MissingExtra as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, DroprError, OSError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
