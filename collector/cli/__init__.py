"""``collector``: the central daemon and the commands that read its store.

This module only parses arguments and dispatches; each command lives in its own module
and registers itself through an ``add_parser(subparsers)`` function that sets
``handler=<callable(args) -> int>`` as the parser default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.cli import run_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full ``collector`` argument parser."""
    # Imported here so `collector --help` stays fast and a broken command cannot stop others.
    from collector.cli import query as query_cmd  # noqa: PLC0415
    from collector.cli import run as run_cmd  # noqa: PLC0415
    from collector.cli import solve as solve_cmd  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="collector",
        description=(
            "capwatch collector: subscribes to node agents over MQTT, keeps a rolling SQLite "
            "store, answers questions about the fleet, and sizes clusters under a power cap."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run_cmd.add_parser(sub)
    query_cmd.add_parser(sub)
    solve_cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``collector`` console script."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
