"""``collector silence add|list|expire``: mute alerts for a while, from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector.paths import StoreTarget

import argparse
import time
from typing import Final

from collector.cli import COMMANDS
from collector.cli._args import (
    add_settings_args,
    read_settings_from_args,
    refuse_other_actions_flags,
)
from collector.cli._render import Column, free_text, print_json, render_table
from shared.durations import parse_duration
from shared.errors import ConfigError
from shared.units import format_duration

__all__ = ["add_parser", "run"]

_DESCRIPTION: Final = """\
Silences mute the alerts whose labels match all of their matchers: such alerts still show
in `collector alerts` (SILENCED yes) but notify no receiver until the silence ends (after
--for, or `expire`); then they are notified as new. Matchers are Alertmanager's:
name=value, name!=value, name=~regex, name!~regex (regexes match the whole value).

  add     --match M [--match M ...] --for DURATION --comment TEXT --author NAME
  list    the silences in force (--all: ended ones too)
  expire  ID: end a silence now

The running collector picks a change up at its next evaluation (alerts.eval_interval_s).
add and expire write one row to the store (see collector/store/silences.py)."""

_EPILOG: Final = """\
examples:
  collector silence add --match alertname=GpuTemperature --match node=~x1000.* --for 2h \\
      --comment "cooling work in row 3" --author jdoe
  collector silence list --json
  collector silence expire 4

exit status: 0 done; 2 a bad flag, matcher or id, or no database (one line)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector silence``."""
    p = sub.add_parser(
        "silence",
        help=COMMANDS["silence"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument("action", choices=("add", "list", "expire"), help="what to do")
    p.add_argument("id", nargs="?", type=int, help="with expire: the silence's id")
    p.add_argument(
        "--match", action="append", default=[], metavar="MATCHER", help="with add: a label matcher"
    )
    p.add_argument("--for", dest="duration", metavar="DURATION", help="with add: e.g. 2h")
    p.add_argument("--comment", default="", help="with add: why")
    p.add_argument("--author", default="", help="with add: who")
    p.add_argument("--all", action="store_true", help="with list: ended silences too")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Add, list or expire silences."""
    settings = read_settings_from_args(args)
    refuse_other_actions_flags(
        "silence",
        args.action,
        (
            ("--match", ("add",), bool(args.match)),
            ("--for", ("add",), args.duration is not None),
            ("--comment", ("add",), bool(args.comment)),
            ("--author", ("add",), bool(args.author)),
            ("--all", ("list",), args.all),
            ("ID", ("expire",), args.id is not None),
        ),
    )
    now = time.time()
    if args.action == "add":
        return _add(args, settings.store_target, now)
    if args.action == "expire":
        from collector.store.silences import expire_silence  # noqa: PLC0415

        if args.id is None:
            raise ConfigError("expire needs the silence's ID (see `collector silence list`)")
        if not 0 < args.id < 2**63:  # SQLite's INTEGER: a larger one is no silence's ID
            raise ConfigError(
                f"no silence in force with id {args.id}: pick one from `collector silence list`"
            )
        expire_silence(settings.store_target, args.id, now)
        if args.json:
            print_json({"id": args.id, "expired": True})
        else:
            print(f"silence {args.id} expired: its alerts notify again")
        return 0
    return _list(settings.store_target, now, everything=args.all, as_json=args.json)


def _add(args: argparse.Namespace, db: StoreTarget, now: float) -> int:
    from collector.alerts.route import parse_matcher  # noqa: PLC0415
    from collector.store.silences import add_silence  # noqa: PLC0415

    if not args.match:
        raise ConfigError("add needs at least one --match (e.g. --match node=x1000c0s0b0n0)")
    if args.duration is None:
        raise ConfigError("add needs --for (e.g. --for 2h)", field="--for")
    seconds = parse_duration(args.duration, field="--for", positive=True)
    for m in args.match:
        try:
            parse_matcher(m)
        except ValueError as exc:
            raise ConfigError(f"--match {exc}", field="--match") from None
    sid = add_silence(db, args.match, now, now + seconds, comment=args.comment, author=args.author)
    if args.json:
        print_json({"id": sid, "matchers": args.match, "ends_at": now + seconds})
    else:
        print(f"silence {sid} added until {format_duration(seconds)} from now")
    return 0


def _list(db: StoreTarget, now: float, *, everything: bool, as_json: bool) -> int:
    from collector.store.queries import silences  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    with StoreReader(db) as store:
        rows = silences(store, now, expired=everything)
    if as_json:
        print_json({"silences": rows})
        return 0
    if not rows:
        print("no silences")
        return 0
    for r in rows:
        r["match"] = " ".join(r["matchers"])
        r["left"] = max(0.0, r["ends_at"] - now)
    columns = [
        Column("id", "ID"),
        Column("match", "MATCHERS", align_right=False),
        Column("left", "ENDS IN", format_duration),
        Column("author", "AUTHOR", free_text, align_right=False),
        Column("comment", "COMMENT", free_text, align_right=False),
    ]
    print(render_table(rows, columns))
    return 0
