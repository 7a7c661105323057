"""``collector lease add|list|show|cancel|extend|renew``: who holds which nodes until when."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any, Final

from collector.cli import COMMANDS
from collector.cli._args import (
    ReadSettings,
    add_settings_args,
    node_names,
    read_settings_from_args,
    refuse_other_actions_flags,
)
from collector.cli._render import Column, print_json, render_table
from collector.cli._render import shown as safe_text
from shared.errors import ConfigError

if TYPE_CHECKING:
    from collector.governance.state import Governance, Lease
    from collector.paths import StoreTarget

__all__ = ["add_parser", "lease_row", "run"]

_DESCRIPTION: Final = """\
A lease gives a tenant a pool (or named nodes, or a new pool carved from `free` by a
pattern: the fewest nodes, never a node leased to another tenant) from a start date for a
duration, with a notice period for cancelling and an optional contractual minimum. Dates
are calendar dates in the lease's time zone (--tz, UTC by default); a lease covers whole
days from its start to the day before its end. Months convert to days from the start as a
lawyer counts them (a month
from Jan 31 ends on Feb 28, or 29 in a leap year).

  add     --tenant T (--pool P | --nodes a,b | --pool P --nodes a,b | --pattern P:a100:8:...)
          --start YYYY-MM-DD
          [--duration 180d] [--notice 90d] [--minimum 120d] [--tz ZONE] [--auto-renew]
          [--name NAME] [--force [--reason TEXT]]
  list    every lease with its status (pending, active, notice_given, expired)
  show    NAME|ID: its dates, last day to give notice (notice_deadline), and nodes
  cancel  NAME|ID [--on DATE]: record notice (default today): it ends at notice + period or
          the contractual minimum, whichever is later; a DATE before both the lease's start
          and the day it was booked is refused (a wrong year, not a notice)

Notice in months counts back from the term's end in calendar months, the day clamped to
the month's end: a year from 2038-02-28 with --notice 3m ends 2039-02-28 (exclusive), so
notice is due by 2038-11-28. In days, in days. Without a notice period, notice can be given
on any day up to the lease's last day and takes effect at the end of that day; the shown
deadline is then the term's last day, the last day `cancel` ends it with its term.
  extend  NAME|ID --by 30d: make it longer;  renew NAME|ID: one more term

A node cannot be in two leases at once: add refuses, naming the node and the lease. With
quotas set (`collector quota`), add, extend and renew (and `pool add`/`apply` growing a
leased pool) are admitted only if the tenant stays within what it may hold (its nominal
quota plus what its cohort lends, within its borrowing limit) at every instant of the
days the change adds, given every other lease in force then, from today on: the answer
does not depend on the order leases were added. A refusal names the first day it fails,
the tenant, the resource (gpus; power_kw of the GPUs' power limits) and the figures;
--force --reason "why" admits it anyway and records the reason on the lease. Nodes
declared by `collector inventory import` count their GPUs like an agent's.
The running collector picks changes up at its next rule evaluation."""

_EPILOG: Final = """\
examples:
  collector lease add --tenant acme --pool acme-a --nodes x1000c0s0b0n0,x1000c0s0b0n1 \\
      --start 2026-01-01 --duration 180d --notice 90d
  collector lease add --tenant zinal --pattern zinal:h100:64:memory:800 --start 2026-02-01
  collector lease list --json
  collector lease cancel acme-2026-01-01 --on 2026-02-01

exit status: 0 done; 2 a bad flag, an overlap, a quota refusal or no database (one line)."""


_DURATION: Final = "180d"
_NONE: Final = "0d"
"""--notice and --minimum when not given: none."""
_TZ: Final = "UTC"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector lease``."""
    p = sub.add_parser(
        "lease",
        help=COMMANDS["lease"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument(
        "action", choices=("add", "list", "show", "cancel", "extend", "renew"), help="what to do"
    )
    p.add_argument("lease", nargs="?", help="show/cancel/extend/renew: the lease's name or id")
    p.add_argument("--tenant", help="add: who holds it; list: only this tenant's")
    p.add_argument("--pool", help="add: the pool leased (created with --nodes if new)")
    p.add_argument("--nodes", help="add: comma-separated node names")
    p.add_argument(
        "--pattern",
        metavar="PATTERN",
        help="add: a new pool carved from `free` by a clstr pattern (POOL:term:count:...), "
        "fewest nodes, as `collector pool apply` plans it",
    )
    p.add_argument("--start", help="add: first day, YYYY-MM-DD in --tz")
    p.add_argument(
        "--duration", default=_DURATION, help=f"add: 180d, 26w, 6m, 1y (default {_DURATION})"
    )
    p.add_argument(
        "--notice",
        default=_NONE,
        help="add: notice period for cancelling: 90d, or 3m (calendar months counted back "
        "from the term's end); default none: notice on any day ends the lease after that day",
    )
    p.add_argument("--minimum", default=_NONE, help="add: contractual minimum term, e.g. 120d")
    p.add_argument("--tz", default=_TZ, help=f"add: IANA time zone of the dates (default {_TZ})")
    p.add_argument("--auto-renew", action="store_true", help="add: renews each term until notice")
    p.add_argument("--name", help="add: the lease's name (default TENANT-START)")
    p.add_argument("--comment", default="", help="add: free text")
    p.add_argument(
        "--force", action="store_true", help="add/extend/renew: even beyond the tenant's quota"
    )
    p.add_argument("--reason", help="with --force: why (recorded with the lease)")
    p.add_argument("--on", help="cancel: the day notice was given (default today in its zone)")
    p.add_argument("--by", help="extend: how much longer, e.g. 30d or 3m")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch the lease action."""
    settings = read_settings_from_args(args)
    forced = ("add", "extend", "renew")
    refuse_other_actions_flags(
        "lease",
        args.action,
        (
            ("LEASE", ("show", "cancel", "extend", "renew"), args.lease is not None),
            ("--tenant", ("add", "list"), args.tenant is not None),
            ("--pool", ("add",), args.pool is not None),
            ("--nodes", ("add",), args.nodes is not None),
            ("--pattern", ("add",), args.pattern is not None),
            ("--start", ("add",), args.start is not None),
            ("--duration", ("add",), args.duration != _DURATION),
            ("--notice", ("add",), args.notice != _NONE),
            ("--minimum", ("add",), args.minimum != _NONE),
            ("--tz", ("add",), args.tz != _TZ),
            ("--auto-renew", ("add",), args.auto_renew),
            ("--name", ("add",), args.name is not None),
            ("--comment", ("add",), bool(args.comment)),
            ("--force", forced, args.force),
            ("--reason", forced, args.reason is not None),
            ("--on", ("cancel",), args.on is not None),
            ("--by", ("extend",), args.by is not None),
        ),
    )
    now = time.time()
    if args.action == "add":
        return _add(args, settings, now)
    if args.action == "list":
        return _list(args, settings.store_target, now)
    if args.lease is None:
        raise ConfigError(f"{args.action} needs the lease's name or id", field="lease")
    if args.action == "show":
        return _show(args, settings.store_target, now)
    return _change(args, settings.store_target, now)


def _add(args: argparse.Namespace, settings: ReadSettings, now: float) -> int:
    from collector.governance.lease import (  # noqa: PLC0415
        LeaseError,
        LeaseTerms,
        parse_date,
        parse_days,
        parse_notice,
    )
    from collector.governance.ops import LeaseRequest, add_lease  # noqa: PLC0415
    from collector.store.command import Command  # noqa: PLC0415
    from collector.store.usage import node_hardware  # noqa: PLC0415

    if not args.tenant:
        raise ConfigError("add needs --tenant NAME", field="--tenant")
    if args.pattern is not None:
        args.pool, args.nodes = _carve(args, settings, now)
    if not args.pool and not args.nodes:
        raise ConfigError("add needs --pool NAME, --nodes a,b or --pattern", field="--nodes")
    if not args.start:
        raise ConfigError("add needs --start YYYY-MM-DD", field="--start")
    try:
        start = parse_date(args.start, field="--start")
        notice_days, notice_months = parse_notice(args.notice, start, field="--notice")
        terms = LeaseTerms(
            start=start,
            duration_days=parse_days(args.duration, start, field="--duration"),
            notice_days=notice_days,
            notice_months=notice_months,
            min_days=parse_days(args.minimum, start, field="--minimum"),
            tz=args.tz,
            auto_renew=args.auto_renew,
        )
    except LeaseError as exc:
        raise ConfigError(str(exc)) from None
    nodes = node_names([args.nodes or ""])
    req = LeaseRequest(
        name=args.name or f"{args.tenant}-{start.isoformat()}",
        tenant=args.tenant,
        terms=terms,
        pool=args.pool,
        nodes=nodes,
        force_reason=(args.reason or "forced without a reason") if args.force else None,
        comment=args.comment,
    )
    with Command(settings.store_target, now=now) as tx:
        lease_id, admission = add_lease(tx, req, tx.run(node_hardware(tx.dialect)))
        lease = next(x for x in tx.governance.state().leases if x.id == lease_id)
    row = lease_row(lease, now)
    if admission is not None:
        row["quota"] = {
            "basis": "allocated",
            "gpus": admission.amount,
            "admitted": admission.admitted,
            "borrowed": admission.borrowed,
            "lenders": dict(admission.lenders),
        }
    if args.json:
        print_json(row)
        return 0
    forced = " (FORCED beyond quota: recorded)" if lease.forced else ""
    print(
        f"lease {lease.name} (id {lease.id}) added: {row['tenant']} holds {len(lease.nodes)} "
        f"nodes from {row['start']} to {row['last_day']} ({row['tz']}), {row['status']}{forced}"
    )
    if admission is not None and admission.borrowed > 0 and admission.lenders:
        lenders = ", ".join(f"{n} {a:g}" for n, a in admission.lenders)
        print(f"  borrows {admission.borrowed:g} GPUs (allocated basis) from: {lenders}")
    return 0


def _carve(args: argparse.Namespace, settings: ReadSettings, now: float) -> tuple[str, str]:
    """``--pattern``: the new pool's name and the nodes the plan takes from ``free`` (the
    lease's transaction creates the pool with them, so a refused lease leaves no pool).
    ``settings``: those the command read (``--config`` is read once: a pipe has no second
    reading)."""
    from collector.cli.inventory import load_nodes  # noqa: PLC0415
    from collector.governance.allocate import plan_pool  # noqa: PLC0415
    from collector.governance.pattern import parse_pattern  # noqa: PLC0415
    from collector.store.pools import unended_lease_nodes  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    if args.nodes:
        raise ConfigError("--pattern chooses the nodes: leave out --nodes", field="--nodes")
    pattern = parse_pattern(args.pattern, field="--pattern")
    if args.pool is not None and args.pool != pattern.pool:
        raise ConfigError(
            f"--pool {args.pool!r} differs from the pattern's pool {pattern.pool!r}: the "
            "pattern's first field names the pool",
            field="--pool",
        )
    nodes = load_nodes(settings)
    if any(n.pool == pattern.pool for n in nodes):
        raise ConfigError(
            f"pool {pattern.pool!r} exists: --pattern carves a new pool from free; lease the "
            f"existing one with --pool {pattern.pool} (resize it first with `collector pool "
            "apply`)",
            field="--pattern",
        )
    with StoreReader(settings.store_target) as store:
        excluded = unended_lease_nodes(store, now)
    plan = plan_pool(nodes, pattern, excluded=excluded)  # impossible: one line, exit 2
    return pattern.pool, ",".join(plan.final)


def lease_row(lease: Lease, now: float) -> dict[str, Any]:
    """A lease as a JSON-ready row: identity, dates, status and notice deadline. The notice
    period is ``notice`` as written (``90d``, ``3m``) and, as a number, in the one of
    ``notice_days`` and ``notice_months`` it is counted in (the other ``None``)."""
    import datetime as dt  # noqa: PLC0415

    from collector.governance.lease import notice_deadline, term_end, today_in  # noqa: PLC0415

    t = lease.terms
    today = today_in(t.tz, now)
    end = lease.end()
    deadline = notice_deadline(t, today)
    return {
        "id": lease.id,
        "name": lease.name,
        "tenant": lease.tenant,
        "pool": lease.pool,
        "nodes": len(lease.nodes),
        "start": t.start.isoformat(),
        "end": None if end is None else end.isoformat(),
        "last_day": (
            f"renews {(term_end(t, today) - dt.timedelta(days=1)).isoformat()}"
            if end is None
            else (end - dt.timedelta(days=1)).isoformat()
        ),
        "tz": t.tz,
        "status": lease.status(now),
        "duration_days": t.duration_days,
        "notice": t.notice,
        "notice_days": None if t.notice_months else t.notice_days,
        "notice_months": t.notice_months or None,
        "min_days": t.min_days,
        "auto_renew": t.auto_renew,
        "notice_given": None if t.notice_given is None else t.notice_given.isoformat(),
        "notice_deadline": None if deadline is None else deadline.isoformat(),
        "forced": lease.forced,
        "force_reason": lease.force_reason,
        "comment": lease.comment,
    }


def _state(db: StoreTarget) -> Governance:
    from collector.store.governance import governance  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    with StoreReader(db) as store:
        if store.lacks("leases"):
            raise ConfigError(
                f"{str(db)!r} has no leases table yet: start this version's `collector run` "
                "once to migrate it"
            )
        return store.run(governance())


def _list(args: argparse.Namespace, db: StoreTarget, now: float) -> int:
    from collector.cli.usage import check_tenant  # noqa: PLC0415

    gov = _state(db)
    if args.tenant is not None:
        check_tenant(gov, args.tenant)
    rows = [lease_row(x, now) for x in gov.leases if args.tenant in (None, x.tenant)]
    if args.json:
        print_json({"leases": rows})
        return 0
    if not rows:
        print("no leases")
        return 0
    columns = [
        Column("id", "ID"),
        Column("name", "NAME", align_right=False),
        Column("tenant", "TENANT", align_right=False),
        Column("pool", "POOL", align_right=False),
        Column("nodes", "NODES"),
        Column("start", "START", align_right=False),
        Column("last_day", "LAST DAY", align_right=False),
        Column("tz", "TZ", align_right=False),
        Column("status", "STATUS", align_right=False),
        Column("notice_deadline", "NOTICE BY", align_right=False),
    ]
    print(render_table(rows, columns))
    return 0


def _show(args: argparse.Namespace, db: StoreTarget, now: float) -> int:
    from collector.governance.ops import find_lease  # noqa: PLC0415

    gov = _state(db)
    lease = find_lease(gov, args.lease)
    row = lease_row(lease, now)
    row["nodes"] = list(lease.nodes)
    if args.json:
        print_json(row)
        return 0
    width = max(len(k) for k in row)
    for key, value in row.items():
        text = ", ".join(value) if isinstance(value, list) else value
        # comment and force reason are anyone's free text: no escape reaches the terminal
        print(f"{key.ljust(width)}  {'-' if text is None else safe_text(str(text))}")
    return 0


def _change(args: argparse.Namespace, db: StoreTarget, now: float) -> int:
    from collector.governance.lease import LeaseError, parse_date, parse_days  # noqa: PLC0415
    from collector.governance.ops import change_lease, find_lease  # noqa: PLC0415
    from collector.store.command import Command  # noqa: PLC0415
    from collector.store.usage import node_hardware  # noqa: PLC0415

    if args.force and args.action == "cancel":
        raise ConfigError("cancel gives nodes back: --force is for add, extend and renew")
    force_reason = (args.reason or "forced without a reason") if args.force else None
    with Command(db, now=now) as tx:
        days = None
        try:
            on = parse_date(args.on, field="--on") if args.on else None
            if args.action == "extend":
                if not args.by:
                    raise ConfigError("extend needs --by, e.g. --by 30d or --by 3m", field="--by")
                current = find_lease(tx.governance.state(), args.lease).terms
                days = parse_days(args.by, current.scheduled_end, field="--by")
        except LeaseError as exc:
            raise ConfigError(str(exc)) from None
        lease, _ = change_lease(
            tx,
            args.lease,
            args.action,
            on=on,
            days=days,
            hardware=tx.run(node_hardware(tx.dialect)) if args.action != "cancel" else None,
            force_reason=force_reason,
        )
        changed = next(x for x in tx.governance.state().leases if x.id == lease.id)
    row = lease_row(changed, now)
    if args.json:
        print_json(row)
        return 0
    if args.action == "cancel":
        print(
            f"lease {row['name']}: notice given on {row['notice_given']}; it ends after "
            f"{row['last_day']} ({row['tz']}), status {row['status']}"
        )
    else:
        print(f"lease {row['name']}: now runs to {row['last_day']} ({row['tz']})")
    return 0
