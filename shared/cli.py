"""What both command lines share: running a subcommand with capwatch's exit-code rules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.errors import CapwatchError

__all__ = ["run_command"]


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and call the chosen subcommand's ``handler``.

    Exit codes: the handler's own; 2 with one line on stderr for a capwatch error (a bad
    setting, a missing database, an invalid plan: never a traceback); 130 on Ctrl-C.
    """
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except CapwatchError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
