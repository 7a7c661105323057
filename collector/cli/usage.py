"""``collector usage``: who held and used what, from the usage ledger, with cost.

Argument handling and output only: the reads are :func:`read_days` (the ledger's sums,
:func:`collector.store.ledger.ledger_days`, with the leases' allocation,
:func:`collector.governance.billing.allocated_days`), the folding and pricing
:func:`collector.governance.billing.usage_report`.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import datetime as dt
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from collector.cli import COMMANDS
from collector.cli._args import add_settings_args, settings_from_args
from collector.cli._render import Column, print_json, render_table
from collector.governance.periods import PERIODS
from shared.cli import first_named
from shared.errors import ConfigError
from shared.units import format_pct

if TYPE_CHECKING:
    from collector.governance.state import Governance
    from collector.store.reader import StoreReader

__all__ = ["add_parser", "check_tenant", "checked_filters", "period_window", "read_days", "run"]

_DESCRIPTION: Final = """\
GPU-hours, energy and cost per tenant from the usage ledger (the collector keeps it per
hour and node from the rollups and the leases in force each hour).

  allocated    GPUs of the lease's nodes x the hours the lease was in force (the lease
               table: billed whether or not a collector ran or a node reported)
  busy         GPU-hours at or above governance.busy_util_pct (measured)
  utilisation  busy / allocated; idle leased = allocated - busy (unseen hours count idle)
  coverage     GPU-hours the samples covered / allocated: where monitoring had a gap
  energy       GPU (energy counters), CPU (RAPL), node: measured where reported, else the
               capacity plan's model of the node type, else GPU + CPU ('basis' says which)
  cost         allocated GPU-hours x the [billing] price (by lease, else tenant, else
               gpu_hour) + node kWh x kwh

Rows are per period (--by) and tenant; 'totals' add them up; 'fleet' also counts the
hours no lease held. Days and months are UTC."""

_EPILOG: Final = """\
examples:
  collector usage --month 2026-11
  collector usage --tenant acme --from 2026-11-01 --to 2026-11-15 --by day
  collector usage --pool a100 --month 2026-11 --json
  collector usage --month 2026-11 --csv > november.csv

exit status: 0 answered; 2 a bad flag or setting, a --tenant, --lease or --pool the store
never knew, or no database (one line)."""

_COLUMNS: Final = (
    "period",
    "tenant",
    "allocated_gpu_hours",
    "busy_gpu_hours",
    "utilisation_pct",
    "coverage_pct",
    "idle_leased_gpu_hours",
    "used_gpu_hours",
    "gpu_kwh",
    "cpu_kwh",
    "node_kwh",
    "node_kwh_basis",
    "gpu_hour_cost",
    "energy_cost",
    "cost",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector usage``."""
    p = sub.add_parser(
        "usage",
        help=COMMANDS["usage"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--tenant", metavar="T", help="only this tenant's leases")
    who.add_argument("--lease", metavar="L", help="only this lease (its name or id)")
    who.add_argument("--pool", metavar="P", help="only this pool's hours")
    p.add_argument("--month", metavar="YYYY-MM", help="one calendar month (UTC)")
    p.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first day (UTC)")
    p.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last day, included (UTC)")
    p.add_argument("--by", choices=PERIODS, default="month", help="rows per (default month)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    out.add_argument("--csv", action="store_true", help="the rows as CSV")
    p.set_defaults(handler=run)


def _day(text: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is not a date: write YYYY-MM-DD, e.g. 2026-11-01", field=flag
        ) from None


def period_window(month: str | None, start: str | None, end: str | None) -> tuple[float, float]:
    """[since, until) in Unix seconds for ``--month`` or ``--from``/``--to`` (UTC days)."""
    if month is not None:
        if start is not None or end is not None:
            raise ConfigError("--month or --from/--to, not both", field="--month")
        try:
            year, mon = (int(x) for x in month.split("-"))
            first = dt.date(year, mon, 1)
        except ValueError:
            raise ConfigError(
                f"--month {month!r} is not a month: write YYYY-MM, e.g. 2026-11", field="--month"
            ) from None
        last = first.replace(day=calendar.monthrange(year, mon)[1])
    elif start is not None and end is not None:
        first, last = _day(start, "--from"), _day(end, "--to")
        if last < first:
            raise ConfigError(f"--to {end} is before --from {start}", field="--to")
    else:
        raise ConfigError(
            "say which days: --month YYYY-MM, or --from YYYY-MM-DD --to YYYY-MM-DD",
            field="--month",
        )
    since = dt.datetime(first.year, first.month, first.day, tzinfo=dt.UTC).timestamp()
    until = since + ((last - first).days + 1) * 86_400.0
    return since, until


def _listed(names: Iterable[str]) -> str:
    """The known names of a refusal, sorted and cut to the first ten."""
    known = sorted(set(names))
    return first_named(known, 10) if known else "none yet"


def check_tenant(gov: Governance, tenant: str) -> None:
    """Refuse a ``--tenant`` the store never knew (none of its tenants, nor a lease's), with
    one line naming the flag and the tenants it knows: a typo would otherwise answer with
    nothing and exit 0."""
    tenants = set(gov.tenants) | {held.tenant for held in gov.leases}
    if tenant not in tenants:
        raise ConfigError(
            f"--tenant {tenant!r}: no such tenant (tenants: {_listed(tenants)}; "
            "`collector lease list`)",
            field="--tenant",
        )


def checked_filters(
    reader: StoreReader,
    *,
    tenant: str | None = None,
    lease: str | None = None,
    pool: str | None = None,
) -> str | None:
    """Refuse a ``--tenant``, ``--lease`` or ``--pool`` the store never knew, with one line
    naming the flag (a typo would otherwise bill nothing and exit 0); return ``--lease`` as
    the ledger names it: by its name or its id, as every ``collector lease`` command takes
    it (:func:`collector.governance.ops.find_lease`). A pool deleted since is known
    (:func:`collector.store.pools.pool_names`): its past hours are still in the ledger."""
    from collector.governance.ops import find_lease  # noqa: PLC0415
    from collector.store.governance import governance  # noqa: PLC0415
    from collector.store.pools import pool_names  # noqa: PLC0415

    if pool is not None and pool not in (pools := pool_names(reader)):
        raise ConfigError(
            f"--pool {pool!r}: no such pool (pools: {_listed(pools)}; `collector pool list`)",
            field="--pool",
        )
    if tenant is None and lease is None:
        return None
    gov = reader.run(governance())
    if tenant is not None:
        check_tenant(gov, tenant)
    if lease is None:
        return None
    try:
        return find_lease(gov, lease).name
    except ConfigError:
        raise ConfigError(
            f"--lease {lease!r}: no such lease, by name or id (leases: "
            f"{_listed(held.name for held in gov.leases)}; `collector lease list`)",
            field="--lease",
        ) from None


def read_days(
    reader: StoreReader,
    since: float,
    until: float,
    *,
    tenant: str | None = None,
    lease: str | None = None,
    pool: str | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """The ledger's sums per UTC day, tenant, lease and pool over [since, until), each
    lease's allocated GPU-hours those of its contract up to ``now`` (default: the clock),
    as :func:`collector.governance.billing.usage_report` reads them."""
    from collector.governance.billing import (  # noqa: PLC0415
        allocated_days,
        billed_days,
    )
    from collector.store.ledger import (  # noqa: PLC0415
        gpu_history,
        lease_history,
        leases_held,
        ledger_days,
        pool_history,
    )
    from collector.store.usage import node_hardware  # noqa: PLC0415

    days = reader.run(ledger_days(since, until, tenant=tenant, lease=lease, pool=pool))
    leases = reader.run(leases_held())
    members = reader.run(lease_history(since)) if reader.has_table("lease_moves") else None
    inventory = {node: hw.gpus for node, hw in reader.run(node_hardware(reader.dialect)).items()}
    leased = {n for h in leases for n in (members.nodes(h.name, h.nodes) if members else h.nodes)}
    until = min(until, time.time() if now is None else now)
    reported = reader.run(gpu_history(sorted(leased - inventory.keys()), since, until))
    allocated = allocated_days(
        leases,
        inventory,
        reader.run(pool_history(since)),
        since,
        until,
        reported=reported,
        tenant=tenant,
        lease=lease,
        pool=pool,
        members=members,
    )
    return billed_days(days, allocated)


def run(args: argparse.Namespace) -> int:
    """Print the usage rows and totals; exit 0, or 2 with one line on a bad flag."""
    from collector.governance.billing import usage_report  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    since, until = period_window(args.month, args.start, args.end)
    settings = settings_from_args(args)
    with StoreReader(settings.store_target) as reader:
        if reader.lacks("usage_ledger"):
            raise ConfigError(
                f"{settings.store_target} has no usage ledger yet: start this version's "
                "`collector run` once to migrate it",
                field="--db",
            )
        lease = checked_filters(reader, tenant=args.tenant, lease=args.lease, pool=args.pool)
        days = read_days(reader, since, until, tenant=args.tenant, lease=lease, pool=args.pool)
    report = usage_report(days, args.by, settings.billing)
    report = {"since": since, "until": until, "by": args.by, **report}
    if args.json:
        print_json(report)
    elif args.csv:
        w = csv.DictWriter(sys.stdout, fieldnames=_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(report["rows"])
    else:
        _print(report)
    return 0


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _print(report: dict[str, Any]) -> None:
    rows = report["rows"]
    if not rows:
        print("no leased hours in that window")
    else:
        cur = report["currency"]
        totals = {**report["totals"], "period": "total", "tenant": ""}
        print(
            render_table(
                [*rows, totals],
                [
                    Column("period", "PERIOD", align_right=False),
                    Column("tenant", "TENANT", align_right=False),
                    Column("allocated_gpu_hours", "ALLOC GPU-H", _num),
                    Column("busy_gpu_hours", "BUSY GPU-H", _num),
                    Column("utilisation_pct", "UTIL", format_pct),
                    Column("coverage_pct", "COVERAGE", format_pct),
                    Column("idle_leased_gpu_hours", "IDLE GPU-H", _num),
                    Column("gpu_kwh", "GPU KWH", _num),
                    Column("cpu_kwh", "CPU KWH", _num),
                    Column("node_kwh", "NODE KWH", _num),
                    Column("node_kwh_basis", "BASIS", align_right=False),
                    Column("cost", f"COST {cur}", lambda v: f"{v:,.2f}"),
                ],
            )
        )
    f = report["fleet"]
    print(
        f"fleet: {_num(f['allocated_gpu_hours'])} GPU-hours allocated ("
        f"{'-' if f['coverage_pct'] is None else format_pct(f['coverage_pct'])} "
        "covered by samples), "
        f"{_num(f['reported_gpu_hours'])} reported, {_num(f['node_kwh'])} kWh "
        f"({f['node_kwh_basis']})"
    )
