"""``collector``: the central daemon and the commands that read its store.

This module only parses arguments and dispatches; each command lives in its own module
and registers itself through an ``add_parser(subparsers)`` function that sets
``handler=<callable(args) -> int>`` as the parser default.

Only the command named on the line is imported: the others are listed by name and help
line, which is all ``collector --help`` shows. So ``collector --help`` imports no command
module (the daemon's brings MQTT, aiosqlite and pydantic), and a broken command cannot
stop the others.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Collection, Sequence
from typing import Final

from shared.cli import run_command

__all__ = ["COMMANDS", "EXTRA_MODULES", "build_parser", "main", "missing_extra"]

EXTRA_MODULES: Final = {
    "aiosqlite": "aiosqlite",
    "zstandard": "zstandard",
    "httpx": "httpx",
    "pysnmp": "pysnmp",
    "sniffio": "sniffio",
    "scipy": "scipy",
    "numpy": "numpy",
    "tomli-w": "tomli_w",
    "tzdata": "tzdata",
    "google-re2": "re2",
    "psycopg": "psycopg",
}
"""The ``collector`` extra of pyproject.toml (distribution: module it installs). The plain
install (``pip install capwatch``) is the node agent; a test holds this equal to the extra."""

COMMANDS: Final = {
    "run": ("collector.cli.run", "run the collector daemon"),
    "query": (
        "collector.cli.query",
        "recent stats: fleet summary, one node's samples, per-GPU rows, rejected messages",
    ),
    "alerts": (
        "collector.cli.alerts",
        "firing and pending alerts of the built-in rules (--history: state changes)",
    ),
    "silence": (
        "collector.cli.silence",
        "mute alerts for a while: add --match ... --for 2h, list, expire ID",
    ),
    "rules": ("collector.cli.rules", "the alert rules in force, with thresholds and timings"),
    "solve": (
        "collector.cli.solve",
        "size a cluster under a power cap: how many GPUs fit, and why not more",
    ),
    "inventory": (
        "collector.cli.inventory",
        "hardware per node as components (per pool, --node, import FILE of declared nodes)",
    ),
    "pool": (
        "collector.cli.pool",
        "named sets of nodes: list, show, create, delete, add, remove, apply -p PATTERN",
    ),
    "capacity": (
        "collector.cli.capacity",
        "live draw under the site's cap: headroom, what still fits, what-if --add/--remove",
    ),
    "plot": (
        "collector.cli.plot",
        "PNG pictures: utilisation and power over time, capacity history, rack treemap",
    ),
    "lease": (
        "collector.cli.lease",
        "leases of pools or nodes to tenants: add, list, show, cancel (notice), extend, renew",
    ),
    "quota": (
        "collector.cli.quota",
        "quotas with Kueue's cohort semantics: set, show (allocated and measured), check",
    ),
    "apply": (
        "collector.cli.apply",
        "tenants, cohorts, quotas, pools and leases from a TOML file (--dry-run: the diff)",
    ),
    "export": (
        "collector.cli.export",
        "the governance state: TOML for `apply`, Kueue manifests or Slurm reservations",
    ),
    "usage": (
        "collector.cli.usage",
        "GPU-hours allocated and busy, energy and cost per tenant, lease or pool, by period",
    ),
    "migrate": (
        "collector.cli.migrate",
        "copy a SQLite store into PostgreSQL: --from capwatch.db --to postgresql://...",
    ),
}
"""Each command's module and the help line ``collector --help`` shows for it (which the
module registers too; a test holds them equal)."""


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: its options may stand anywhere among its operands.

    ``collector pool create --db x.db zinal``: argparse's plain parse matched the action,
    gave the ``NAME [NODE ...]`` operands nothing, and refused ``zinal`` as an unrecognized
    argument; the intermixed parse (options first, then the operands) takes it. Nested
    calls (the intermixed parse runs the plain one twice) go to the plain parse.
    """

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser(full: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``collector`` argument parser, with the commands in ``full`` (default: all)
    registered by their modules and the others by name and help line only."""
    parser = argparse.ArgumentParser(
        prog="collector",
        description=(
            "capwatch collector: subscribes to node agents over MQTT, keeps a rolling store "
            "(a SQLite file, or PostgreSQL for a site with several collectors) with rollups "
            "for months, raises alerts, governs leases and quotas, answers questions about "
            "the fleet, and sizes clusters under a power cap."
        ),
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )
    for name, (module, help_line) in COMMANDS.items():
        if full is None or name in full:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def _named_command(argv: Sequence[str]) -> str | None:
    """The command on the line: ``collector`` itself takes no option but ``-h``, so it is
    the first argument that does not start with ``-`` (``None``: help or an error)."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            return arg
    return None


def missing_extra() -> list[str]:
    """The distributions of the ``collector`` extra that are not installed (none: all are).

    ``find_spec`` of a top-level name finds the module without importing it (~µs each).
    """
    return [
        dist for dist, module in EXTRA_MODULES.items() if importlib.util.find_spec(module) is None
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``collector`` console script.

    In an agent-only install (no ``collector`` extra) a command is refused with one line
    naming the extra (exit 2), not an ``ImportError`` from deep inside it.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    command = _named_command(args)
    if command in COMMANDS and (missing := missing_extra()):
        print(
            f"collector {command}: error: the collector's dependencies are not installed "
            f"({', '.join(missing)}): pip install 'capwatch[collector]'",
            file=sys.stderr,
        )
        return 2
    return run_command(build_parser(() if command is None else (command,)), args)


if __name__ == "__main__":
    sys.exit(main())
