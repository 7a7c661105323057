"""``collector plot``: PNG pictures of the fleet from the store (works while the daemon runs).

Three pictures, each 1600x1000 with a title, units and a legend: utilisation and power over
time (the fleet, or one node with ``--node``), capacity history (IT draw against the cap),
and the compute hierarchy as a treemap coloured by power. Drawing is
:mod:`collector.plot`; this module reads flags and the store.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from collector.cli import COMMANDS
from collector.cli._args import add_settings_args
from shared.durations import parse_duration
from shared.errors import ConfigError
from shared.topics import NODE_ID_RE, NODE_ID_RULE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from collector.cli.capacity import CapacityCliSettings
    from collector.paths import StoreTarget
    from collector.settings import BillingSettings
    from collector.store.reader import StoreReader

__all__ = ["add_parser", "run"]

_DESCRIPTION: Final = """\
Pictures of the fleet as PNG files (needs matplotlib: pip install 'capwatch[plot]').

  usage       (default) CPU, memory and GPU utilisation and power over --since: the fleet,
              one node with --node, or one pool's nodes with --pool; raw samples where
              kept, rollups before (the title says which; rollups hold no CPU/memory %).
              With --month (or --from/--to): the usage ledger per day instead, allocated
              against busy GPU-hours and energy, of one tenant (--tenant) or all of them,
              totals and cost as `collector usage` has them
  capacity    live IT draw against the cap over --since, with the 90 % and 98 % lines and
              the worst case (every node at nameplate), from the capacity snapshots
  hierarchy   site -> rack -> node -> GPU as a treemap, area by power drawn, colour by
              power as a share of nameplate (recomputed from the newest samples; --plan)"""

_EPILOG: Final = """\
examples:
  collector plot --out fleet.png --since 6h
  collector plot usage --node x1000c0s0b0n0 --out node.png
  collector plot usage --since 30d --out month.png
  collector plot usage --tenant acme --month 2026-11 --out acme-november.png
  collector plot capacity --since 24h --out capacity.png
  collector plot hierarchy --plan site.toml --out racks.png

exit status: 0 written; 2 a bad flag, no data source, or no matplotlib (one line)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector plot``."""
    p = sub.add_parser(
        "plot",
        help=COMMANDS["plot"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument(
        "picture",
        nargs="?",
        default="usage",
        choices=("usage", "capacity", "hierarchy"),
        help="which picture (default: usage)",
    )
    p.add_argument("--node", metavar="NODE", help="usage: this node instead of the fleet")
    p.add_argument("--pool", metavar="POOL", help="usage: this pool's nodes instead of the fleet")
    p.add_argument("--since", default="1h", metavar="DURATION", help="how far back (default 1h)")
    p.add_argument("--tenant", metavar="T", help="usage per day: this tenant's leases")
    p.add_argument("--month", metavar="YYYY-MM", help="usage per day over one month (UTC)")
    p.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="usage per day: first day")
    p.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="usage per day: last day")
    p.add_argument(
        "--plan",
        type=Path,
        metavar="FILE",
        help="hierarchy: site plan (default: capacity.plan, else the newest snapshot's)",
    )
    p.add_argument(
        "-o", "--out", type=Path, metavar="FILE.png", help="output file (default: PICTURE.png)"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Draw the picture and write it."""
    from collector.cli._args import settings_from_args  # noqa: PLC0415
    from collector.cli.capacity import load_settings_for  # noqa: PLC0415
    from collector.plot.figures import save  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    since_s = parse_duration(args.since, field="--since", positive=True)
    if args.node is not None and not NODE_ID_RE.match(args.node):
        raise ConfigError(f"--node {args.node!r} is not a node id: {NODE_ID_RULE}", field="--node")
    if args.node is not None and args.picture != "usage":
        raise ConfigError("--node goes with the usage picture", field="--node")
    if args.pool is not None and (args.picture != "usage" or args.node is not None):
        raise ConfigError("--pool goes with the usage picture, without --node", field="--pool")
    per_day = args.month is not None or args.start is not None or args.end is not None
    if per_day and (args.picture != "usage" or args.node is not None or args.pool is not None):
        raise ConfigError(
            "--month/--from/--to go with the usage picture, without --node or --pool",
            field="--month",
        )
    if args.tenant is not None and not per_day:
        raise ConfigError(
            "--tenant plots the usage ledger: say which days with --month YYYY-MM (or --from/--to)",
            field="--tenant",
        )
    out: Path = args.out or Path(f"{args.picture}.png")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: write a .png file", field="--out")
    # The ledger's prices as well, from the one reading of --config (a pipe has no second).
    full = settings_from_args(args) if per_day else None
    s = load_settings_for(args, full)
    now = time.time()
    with StoreReader(s.db_path) as reader:
        if full is not None:
            fig = _ledger(reader, args, s.db_path, full.billing)
        elif args.picture == "usage":
            fig = _usage(reader, args.node, args.pool, now - since_s, now)
        elif args.picture == "capacity":
            from collector.cli.capacity import newest_snapshot  # noqa: PLC0415
            from collector.plot.figures import capacity_figure  # noqa: PLC0415
            from collector.store.capacity import snapshot_series  # noqa: PLC0415

            # None at all: the same line as `capacity`; none in the window: a line of its own.
            snap = newest_snapshot(reader, since=now - since_s)
            rows = snapshot_series(reader, now - since_s)
            plan = s.plan
            if plan is None and snap is not None and snap.get("plan"):
                plan = Path(snap["plan"])
            fig = capacity_figure(
                rows, plan.name if plan is not None else "", now - since_s, now, latest=snap
            )
        else:
            fig = _hierarchy(reader, args.plan or s.plan, s, now)
    save(fig, out)
    print(f"{args.picture} picture written to {out}")
    return 0


def _usage(
    reader: StoreReader, node: str | None, pool: str | None, since: float, now: float
) -> Figure:
    from collector.cli.query import require_known_node  # noqa: PLC0415
    from collector.plot.figures import usage_figure  # noqa: PLC0415
    from collector.store.rollups import oldest_raw  # noqa: PLC0415
    from collector.store.series import fleet_series, node_series  # noqa: PLC0415

    members = None
    if node is not None:
        require_known_node(reader, node, now)
    if pool is not None:
        from collector.store.capacity import pool_members  # noqa: PLC0415

        members = pool_members(reader, pool)
        if not members:
            raise ConfigError(f"--pool {pool!r}: no such pool, or it has no nodes", field="--pool")
    subject = f"node {node}" if node else f"pool {pool}" if pool else "fleet"
    oldest = reader.run(oldest_raw(node))
    if oldest is not None and oldest <= since:  # all raw: as fine as the samples allow
        if node is not None:
            return usage_figure(node_series(reader, node, since), subject, since, now)
        rows = fleet_series(reader, since, max((now - since) / 200, 1.0), pool=pool)
        return usage_figure(rows, subject, since, now)
    from collector.store.series import history  # noqa: PLC0415

    step = _plot_step(now - since)
    h = history(
        reader, since, now, step, node=node, nodes=None if members is None else sorted(members)
    )
    names = {"raw": "raw samples", "1m": "1-minute rollups", "1h": "1-hour rollups"}
    note = " then ".join(names[s] for s in h["sources"]) or "no data"
    return usage_figure(h["points"], f"{subject} ({note})", since, now)


def _ledger(
    reader: StoreReader, args: argparse.Namespace, db: StoreTarget, billing: BillingSettings
) -> Figure:
    """The usage ledger per day of --month or --from/--to, one tenant's or every one's,
    priced by ``billing``."""
    import datetime as dt  # noqa: PLC0415

    from collector.cli.usage import checked_filters, period_window, read_days  # noqa: PLC0415
    from collector.governance.billing import usage_report  # noqa: PLC0415
    from collector.plot.figures import WIDTH_PX  # noqa: PLC0415
    from collector.plot.ledger import ledger_figure  # noqa: PLC0415

    since, until = period_window(args.month, args.start, args.end)
    days = round((until - since) / 86_400)
    if days > WIDTH_PX:
        # A bar a day needs a pixel a day; past that matplotlib only burns time and memory
        # (127 years: 2 minutes and 2 GB; 0001-9999 did not end).
        raise ConfigError(
            f"--from/--to: {days:,} days is more than the {WIDTH_PX:,} a picture per day can "
            "show; choose a shorter window (`collector usage --by month` sums longer ones)",
            field="--from",
        )
    if reader.lacks("usage_daily"):
        raise ConfigError(
            f"{db} has no usage ledger yet: start this version's `collector run` once to "
            "migrate it",
            field="--db",
        )
    checked_filters(reader, tenant=args.tenant)
    report = usage_report(
        read_days(reader, since, until, tenant=args.tenant),
        "day",
        billing,
    )
    first = dt.datetime.fromtimestamp(since, dt.UTC).date()
    last = dt.datetime.fromtimestamp(until - 86_400, dt.UTC).date()
    subject = f"tenant {args.tenant}" if args.tenant else "all tenants"
    return ledger_figure(report, subject, first, last)


def _plot_step(window_s: float) -> int:
    """About 200 points over the window, in whole minutes, or whole hours from an hour."""
    step = max(window_s / 200, 60.0)
    unit = 3600 if step >= 3600 else 60
    return int(math.ceil(step / unit) * unit)


def _hierarchy(
    reader: StoreReader, plan: Path | None, s: CapacityCliSettings, now: float
) -> Figure:
    from collector.capacity.compute import compute_picture  # noqa: PLC0415
    from collector.capacity.config import load_capacity_plan  # noqa: PLC0415
    from collector.capacity.fromstore import (  # noqa: PLC0415
        nodes_from_store,
        racks_from_store,
    )
    from collector.plot.treemap import hierarchy_figure  # noqa: PLC0415
    from collector.store.capacity import snapshot_plan  # noqa: PLC0415

    if plan is None and (named := snapshot_plan(reader)) is not None:
        plan = Path(named)
    if plan is None:
        raise ConfigError(
            "the hierarchy needs the site plan: pass --plan FILE or set capacity.plan",
            field="--plan",
        )
    cplan = load_capacity_plan(plan)
    picture = compute_picture(
        cplan,
        nodes_from_store(reader),
        now,
        staleness=s.staleness,
        stale_basis=s.stale_basis,
        rest_basis=s.rest_basis,
        keep_nodes=True,
        rack_power=racks_from_store(reader),
    )
    return hierarchy_figure(cplan, picture)
