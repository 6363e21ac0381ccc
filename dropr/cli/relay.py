"""``dropr-relay``: forwards a spool's queued messages to their peers.

Runs until stopped (SIGTERM/SIGINT finish the requests in flight and exit 0), restarting
its worker if it dies; ``--once`` drains the queue and exits 0 only if every message was
accepted. Settings beyond the options come from ``--config FILE`` (TOML, or JSON by its
``.json`` name; see ``dropr.relay.config``).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence

from ..errors import DroprError
from ..relay import config as _config
from ..relay import supervisor
from ._common import Parser, minutes, positive_int, positive_number

PROG = "dropr-relay"
LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--spool", required=True, metavar="DIR", help="the spool to relay")
    parser.add_argument(
        "--once", action="store_true", help="drain the queue, then exit (0 only if every message was accepted)"
    )
    parser.add_argument(
        "--retry-for",
        type=positive_number,
        metavar="SECONDS",
        help="with --once: keep retrying a failing peer this long before giving up on it (default 30)",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON settings (per-peer tokens)")
    parser.add_argument("--token", help="bearer token for the peers (default: $DROPR_TOKEN)")
    parser.add_argument("--ca-file", metavar="FILE", help="CA certificates for https peers")
    parser.add_argument(
        "--max-age",
        type=minutes,
        metavar="MINUTES",
        help="queued longer than this goes to failed/ (default 10080 = 7 days; 0: never)",
    )
    parser.add_argument(
        "--keep-sent",
        type=minutes,
        metavar="MINUTES",
        help="keep acknowledged messages in sent/ this long (default 0: delete in the background)",
    )
    parser.add_argument("--batch-count", type=positive_int, metavar="N", help="messages per request")
    parser.add_argument("--batch-bytes", type=positive_int, metavar="N", help="payload bytes per request")
    parser.add_argument("--parallel", type=positive_int, metavar="N", help="requests in flight per peer")
    parser.add_argument(
        "--rescan", type=positive_number, metavar="SECONDS", help="fallback rescan of the queue (default 1)"
    )
    parser.add_argument("--no-supervise", action="store_true", help="run the worker in this process, without restarts")
    parser.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser  # fmt: skip


def load_config(args: argparse.Namespace) -> _config.RelayConfig:
    """The relay's settings from the options, the configuration file and the environment."""
    settings = _config.read_file(args.config) if args.config else {}
    token = args.token
    if token is None and "token" not in settings:
        token = os.environ.get("DROPR_TOKEN") or None
    options = {
        "once": args.once or None,
        "retry_for_seconds": args.retry_for,
        "token": token,
        "ca_file": args.ca_file,
        "max_age_minutes": args.max_age,
        "keep_sent_minutes": args.keep_sent,
        "batch_count": args.batch_count,
        "batch_bytes": args.batch_bytes,
        "parallel": args.parallel,
        "rescan_seconds": args.rescan,
    }
    return _config.build(args.spool, settings, options)


def setup_logging(use_syslog: bool, level: str) -> None:
    logger = logging.getLogger("dropr.relay")
    handler: logging.Handler
    if use_syslog:
        handler = logging.handlers.SysLogHandler("/dev/log", logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{PROG}[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}[%(process)d] %(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def _work(config: _config.RelayConfig) -> int:
    from ..relay import daemon
    from ..relay.lock import LockHeld

    try:
        return daemon.run(config)
    except LockHeld as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return supervisor.EXIT_LOCKED
    except DroprError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return supervisor.EXIT_FAILED
    except Exception:
        logging.getLogger("dropr.relay").exception("relay worker crashed")
        return supervisor.EXIT_CRASH


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    try:
        config = load_config(args)
    except (_config.ConfigError, OSError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        setup_logging(args.syslog, args.log_level)
    except OSError as exc:
        print(f"{PROG}: cannot log to syslog: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        if args.no_supervise:
            supervisor.bind_to_parent()
            return _work(config)
        return supervisor.supervise(arguments, once=config.once)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
