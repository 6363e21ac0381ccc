"""dropr: scripting and administration of spools and stores."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import DroprError
from . import consume, spool_cmds, store_cmds
from ._common import EXIT_USAGE, CommandError, MissingExtra, Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dropr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spool_cmds.register(commands)
    store_cmds.register(commands)
    consume.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MissingExtra as exc:
        print(f"dropr: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, DroprError, OSError, ValueError) as exc:
        print(f"dropr: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
