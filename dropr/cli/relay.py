"""dropr-relay: forwards a spool's queued messages to their peers.

Runs until stopped (SIGTERM or SIGINT finish the requests in flight and exit 0), under a
supervisor that restarts its worker if it crashes; --once drains the queue and exits 0 only
if every message was accepted. Settings beyond the options come from --config FILE (see
dropr.relay.config).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import socket
import sys
from collections.abc import Sequence

from ..errors import DroprError
from ..relay import config as _config
from ..relay import supervisor
from ._common import (
    EXIT_USAGE,
    CommandError,
    MissingExtra,
    Parser,
    listen_address,
    log_to,
    minutes,
    positive_int,
    positive_number,
    require,
    stderr_handler,
)

PROG = "dropr-relay"
MODULE = "dropr.cli.relay"
LOG_LEVELS = ("debug", "info", "warning", "error")
SYSLOG_SOCKET = "/dev/log"


def _default(setting: str) -> object:
    """The relay's own value of a setting that neither an option nor --config gives."""
    value = getattr(_config.RelayConfig, setting)
    return f"{value:g}" if isinstance(value, float) else value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__)
    parser.add_argument("--spool", required=True, metavar="DIR", help="the spool to relay")
    parser.add_argument(
        "--once", action="store_true", help="drain the queue, then exit (0 only if every message was accepted)"
    )
    parser.add_argument(
        "--retry-for",
        type=positive_number,
        metavar="SECONDS",
        help="with --once: keep retrying a failing peer this long after its first failure before giving up"
        f" on it (default: {_default('retry_for_seconds')})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file, TOML or JSON by its .json name, for tokens per peer and more (default: none)",
    )
    parser.add_argument("--token", help="bearer token for the peers (default: $DROPR_TOKEN, or the settings file's)")
    parser.add_argument("--ca-file", metavar="FILE", help="CA certificates for https peers (default: the system's)")
    parser.add_argument(
        "--max-age",
        type=minutes,
        metavar="MINUTES",
        help=f"a message queued longer goes to failed/; 0: never (default: {_default('max_age_minutes')},"
        f" {_config.RelayConfig.max_age_minutes / (24 * 60):g} days)",
    )
    parser.add_argument(
        "--keep-sent",
        type=minutes,
        metavar="MINUTES",
        help=f"keep acknowledged messages in sent/ this long; 0: delete them at once, in the background"
        f" (default: {_default('keep_sent_minutes')})",
    )
    parser.add_argument(
        "--batch-count",
        type=positive_int,
        metavar="N",
        help=f"messages per request (default: {_default('batch_count')})",
    )
    parser.add_argument(
        "--batch-bytes",
        type=positive_int,
        metavar="N",
        help=f"payload bytes per request (default: {_default('batch_bytes')})",
    )
    parser.add_argument(
        "--parallel",
        type=positive_int,
        metavar="N",
        help=f"requests in flight per peer (default: {_default('parallel')})",
    )
    parser.add_argument(
        "--rescan",
        type=positive_number,
        metavar="SECONDS",
        help=f"seconds between rescans of the queue, besides the wake-up on each put"
        f" (default: {_default('rescan_seconds')})",
    )
    parser.add_argument(
        "--metrics",
        type=listen_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: none)",
    )
    parser.add_argument(
        "--no-supervise", action="store_true", help="run the worker in this process, with no supervisor to restart it"
    )
    parser.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr")
    parser.add_argument("--syslog-socket", metavar="PATH", default=SYSLOG_SOCKET, help="the syslog socket")
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="log messages of this importance and above"
    )
    return parser


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
        "metrics": args.metrics,
    }
    return _config.build(args.spool, settings, options)


def log_handler(args: argparse.Namespace) -> logging.Handler:
    """Where the logs go: stderr, or with --syslog the syslog socket, which must be there."""
    if not args.syslog:
        return stderr_handler(PROG)
    path = args.syslog_socket
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # as SysLogHandler tries them
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                break
            except OSError as exc:
                problem = exc.strerror or str(exc)
    else:
        raise CommandError(f"cannot log to syslog: {path}: {problem}")
    handler = logging.handlers.SysLogHandler(path, logging.handlers.SysLogHandler.LOG_DAEMON, kind)
    handler.setFormatter(logging.Formatter(f"{PROG}[%(process)d]: %(message)s"))
    return handler


def worker_command(arguments: Sequence[str]) -> list[str]:
    """This command again, with the same ``arguments``, as the worker of a supervisor."""
    return [sys.executable, "-m", MODULE, *arguments, "--no-supervise"]


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
    except ImportError as exc:  # a module missing: no restart brings it
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        logging.getLogger("dropr.relay").exception("relay worker crashed")
        return supervisor.EXIT_CRASH


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    try:
        require("relay")
        config = load_config(args)
        log_to(log_handler(args), args.log_level)
    except MissingExtra as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, _config.ConfigError, OSError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.no_supervise:
            supervisor.bind_to_parent()
            return _work(config)
        return supervisor.supervise(worker_command(arguments), once=config.once)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
