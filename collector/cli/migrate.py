"""``collector migrate``: copy a SQLite store into PostgreSQL (a site outgrowing one file)."""

from __future__ import annotations

import argparse
import sys
from typing import Final

from collector.cli import COMMANDS
from collector.cli._render import print_json
from shared.errors import ConfigError

__all__ = ["add_parser", "run"]

_DESCRIPTION: Final = """\
Copy every table of a SQLite store (samples, quarantine, alerts and their history, the
outbox, silences, pools, leases, quotas, capacity snapshots, meta) into a PostgreSQL
database, in batches, keeping ids. The target is created and migrated as `collector run`
would; one that holds any row is refused unless --force (which empties it first), but for
what a collector writes as it starts (its counters, broker session, the nodes the broker's
retained messages name): a database `collector run` was tried on first is copied into,
those rows replaced, once that collector is stopped.

Stop the collector first (or copy a backup): what it stores after the copy's snapshot stays
behind. Then start it with --db postgresql://... (or [store] url): the broker session and
its backlog carry over (meta is copied), so nothing published meanwhile is lost.

The password is never on the command line: PGPASSWORD, ~/.pgpass or --password-file."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector migrate``."""
    p = sub.add_parser(
        "migrate",
        help=COMMANDS["migrate"][1],
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from", dest="source", required=True, metavar="PATH", help="SQLite store")
    p.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="postgresql://user@host:port/database (no password in it)",
    )
    p.add_argument(
        "--password-file", metavar="FILE", help="a file whose first line is the password"
    )
    p.add_argument("--force", action="store_true", help="empty a target that holds rows first")
    p.add_argument("--json", action="store_true", help="rows copied per table as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Copy, then print rows per table."""
    import asyncio  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from collector.paths import PgTarget, parse_target  # noqa: PLC0415
    from collector.store.copy import copy_store  # noqa: PLC0415
    from shared.logging import configure_logging  # noqa: PLC0415

    source = parse_target(args.source, field="--from")
    if not isinstance(source, Path):
        raise ConfigError("--from takes a SQLite file path", field="--from")
    if not source.is_file():
        what = "is a folder, not a" if source.is_dir() else "names no"
        raise ConfigError(
            f"--from {str(source)!r} {what} SQLite file: give the collector's database "
            "file (its db_path, e.g. /var/lib/capwatch/capwatch.db)",
            field="--from",
        )
    target = parse_target(args.target, field="--to")
    if not isinstance(target, PgTarget):
        raise ConfigError("--to takes a postgresql://user@host:port/database URL", field="--to")
    if args.password_file is not None:
        target = PgTarget(target.url, Path(args.password_file))
    configure_logging("warning")

    def progress(table: str, rows: int) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"\r{table}: {rows:,} rows", end="", file=sys.stderr, flush=True)

    report = asyncio.run(copy_store(source, target, force=args.force, progress=progress))
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        print_json(report.as_dict())
        return 0
    print(f"copied {report.source} -> {report.target} in {report.seconds:.1f} s")
    width = max(len(t) for t in report.tables)
    for table, rows in report.tables.items():
        print(f"  {table:<{width}}  {rows:>12,}")
    print(f"  {'total':<{width}}  {sum(report.tables.values()):>12,}")
    return 0
