"""``collector quota set|show|check``: quotas with Kueue's semantics, on two bases."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.cli import COMMANDS
from collector.cli._args import (
    add_settings_args,
    read_settings_from_args,
    refuse_other_actions_flags,
)
from collector.cli._render import Column, print_json, render_table
from collector.governance.periods import PERIODS
from collector.governance.quota import check_figure
from shared.errors import ConfigError

if TYPE_CHECKING:
    from collector.governance.quota import Quota
    from collector.governance.state import Governance
    from collector.governance.usage import Usage
    from collector.nodefacts import Staleness
    from collector.paths import StoreTarget
    from collector.store.governance import GovernanceWrites

__all__ = ["add_parser", "run"]

_DESCRIPTION: Final = """\
Quotas per tenant and resource (gpus, power_kw, gpu_hours per calendar period, UTC) with
Kueue's semantics: a nominal quota, a borrowing limit (the most it may take beyond its
nominal from its cohort's unused quota; default unbounded) and a lending limit (the most of
its unused quota it lends; default all). Tenants in one cohort share unused quota; a cohort
may hold nominal quota of its own.

Every figure says its basis:
  allocated  what the tenant's leases in force hold: their nodes' GPUs (inventory), the
             GPUs' power limits (kW) and GPU-hours held so far this period
  measured   what its nodes do: GPUs at or above --busy-util % (fresh samples), live GPU +
             CPU power (kW), utilisation-weighted GPU-hours this period (stored samples)

  set     TENANT --resource gpus --nominal 9 [--borrowing-limit 1] [--lending-limit 1]
          [--period month] [--cohort C] [--priority N];  --cohort C without TENANT sets
          the cohort's own nominal quota;  --remove drops the tenant's quota on --resource
  show    [TENANT]: nominal, in use, borrowed, lendable, available now (never below 0,
          as Kueue's), per basis; a cohort whose members hold more than it has is named
          with the members over their own nominal plus what they may borrow (STATE
          exceeded: only a tenant whose own use is beyond that)
          --tree: the cohort tree of --resource per basis: each cohort's own quota and
          limits, subtree and guaranteed quota, use and available; each tenant's under it
  check   TENANT --gpus N: would N more GPUs be admitted, and from whose unused quota

Cohorts form a tree (Kueue's hierarchical cohorts, KEP-79): `set --cohort C --parent P`
gives C a parent, and its own --nominal, --borrowing-limit and --lending-limit (the limits
apply towards its parent, as in Kueue); a parent that would close a cycle is refused."""

_EPILOG: Final = """\
examples:
  collector quota set acme --resource gpus --nominal 9 --cohort research
  collector quota set --cohort research --resource gpus --nominal 12
  collector quota set --cohort left --parent research --nominal 10 --borrowing-limit 5
  collector quota show --tree
  collector quota show --json
  collector quota check acme --gpus 4

exit status: 0 done (check: also when refused; see "admitted"); 2 a bad flag or no database."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector quota``."""
    p = sub.add_parser(
        "quota",
        help=COMMANDS["quota"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument("action", choices=("set", "show", "check"), help="what to do")
    p.add_argument("tenant", nargs="?", help="the tenant")
    p.add_argument(
        "--resource",
        choices=("gpus", "power_kw", "gpu_hours"),
        default="gpus",
        help="set, show --tree: the quota's resource (default gpus)",
    )
    p.add_argument("--nominal", type=float, help="set: the nominal quota")
    p.add_argument("--borrowing-limit", type=float, help="set: most it may borrow (default: any)")
    p.add_argument("--lending-limit", type=float, help="set: most it lends (default: all)")
    p.add_argument("--period", choices=PERIODS, help="set gpu_hours: period")
    p.add_argument("--cohort", help="set: the tenant's cohort (or, alone, the cohort's quota)")
    p.add_argument("--priority", type=int, help="set: the tenant's priority")
    p.add_argument(
        "--parent",
        metavar="COHORT",
        help="set --cohort C: C's parent cohort (Kueue's hierarchical cohorts; - for none)",
    )
    p.add_argument(
        "--tree",
        action="store_true",
        help="show: the cohort tree, each cohort's and tenant's figures under its parent",
    )
    p.add_argument("--remove", action="store_true", help="set: drop this quota")
    p.add_argument("--gpus", type=float, help="check: how many more GPUs")
    p.add_argument(
        "--busy-util",
        type=float,
        metavar="PCT",
        help="measured basis: a GPU at or above this utilisation is busy (default: the "
        "collector's, governance.busy_util_pct)",
    )
    p.add_argument(
        "--from-store",
        action="store_true",
        help="show/check: compute usage from the stored samples even while the collector's "
        "own figures (its last rule evaluation, under a minute old) are available",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch the quota action."""
    settings = read_settings_from_args(args)
    action = "show --tree" if args.action == "show" and args.tree else args.action
    reads = ("show", "show --tree", "check")
    refuse_other_actions_flags(
        "quota",
        action,
        (
            ("--resource", ("set", "show --tree"), args.resource != "gpus"),
            ("--nominal", ("set",), args.nominal is not None),
            ("--borrowing-limit", ("set",), args.borrowing_limit is not None),
            ("--lending-limit", ("set",), args.lending_limit is not None),
            ("--period", ("set",), args.period is not None),
            ("--cohort", ("set",), args.cohort is not None),
            ("--priority", ("set",), args.priority is not None),
            ("--parent", ("set",), args.parent is not None),
            ("--remove", ("set",), args.remove),
            ("--tree", ("show --tree",), args.tree),
            ("--gpus", ("check",), args.gpus is not None),
            ("--busy-util", reads, args.busy_util is not None),
            ("--from-store", reads, args.from_store),
        ),
    )
    now = time.time()
    if args.action == "set":
        return _set(args, settings.store_target, now)
    busy_util = settings.busy_util_pct if args.busy_util is None else args.busy_util
    if not 0 <= busy_util <= 100:
        raise ConfigError("--busy-util must be between 0 and 100", field="--busy-util")
    gov, usages, source = _read(
        settings.store_target, now, busy_util, settings.staleness(), from_store=args.from_store
    )
    if args.action == "show" and args.tree:
        return _tree(args, gov, usages, source)
    if args.action == "show":
        return _show(args, gov, usages, source)
    return _check(args, gov, usages, source)


def _number(value: float | None, flag: str, resource: str) -> float | None:
    """``value`` of ``flag`` as a figure of ``resource`` (:func:`check_figure`); -0 is 0."""
    if value is not None:
        try:
            check_figure(resource, value)
        except ValueError as exc:
            raise ConfigError(f"{flag} {exc}", field=flag) from None
        value += 0.0
    return value


def _set(args: argparse.Namespace, db: StoreTarget, now: float) -> int:
    from collector.governance.quota import Quota  # noqa: PLC0415
    from collector.store.command import Command  # noqa: PLC0415

    nominal = _number(args.nominal, "--nominal", args.resource)
    bl = _number(args.borrowing_limit, "--borrowing-limit", args.resource)
    ll = _number(args.lending_limit, "--lending-limit", args.resource)
    if ll is not None and nominal is not None and ll > nominal:
        raise ConfigError(
            f"--lending-limit {ll:g} is more than --nominal {nominal:g}: a tenant lends at most "
            "its nominal quota (Kueue refuses it too)",
            field="--lending-limit",
        )
    from collector.governance.declare import PRIORITY_MAX, PRIORITY_MIN  # noqa: PLC0415
    from collector.governance.ops import validate_tenant_name  # noqa: PLC0415

    if args.tenant is not None:
        validate_tenant_name(args.tenant, field="TENANT")
    if args.cohort or (args.cohort is not None and args.tenant is None):
        # a tenant's --cohort '' puts it in no cohort; a cohort is never named ''
        validate_tenant_name(args.cohort, what="cohort", field="--cohort")
    if args.priority is not None and not PRIORITY_MIN <= args.priority <= PRIORITY_MAX:
        raise ConfigError(
            f"--priority must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX} (32 "
            f"bits, as a cluster file's priority), got {args.priority}",
            field="--priority",
        )
    with Command(db, now=now) as tx:
        w = tx.governance
        if args.tenant is None:
            if args.cohort is None:
                raise ConfigError("set needs a TENANT, or --cohort C for the cohort's own quota")
            return _set_cohort(w, args, Quota(nominal, bl, ll) if nominal is not None else None)
        if args.parent is not None:
            raise ConfigError(
                "--parent is a cohort's: `quota set --cohort C --parent P` (a tenant's cohort "
                "is --cohort)",
                field="--parent",
            )
        gov = w.state()
        cohort = args.cohort if args.cohort is not None else gov.tenants.get(args.tenant)
        priority = (
            args.priority if args.priority is not None else gov.priorities.get(args.tenant, 0)
        )
        w.put_tenant(args.tenant, cohort or None, priority)
        if args.remove:
            w.put_quota(args.tenant, args.resource, None)
            return _said(args, f"tenant {args.tenant}: {args.resource} quota removed")
        if nominal is None:
            if args.cohort is not None or args.priority is not None:
                return _said(
                    args,
                    f"tenant {args.tenant}: cohort {cohort or '-'}, priority {priority}",
                    cohort=cohort or None,
                    priority=priority,
                )
            raise ConfigError("set needs --nominal N", field="--nominal")
        period = args.period if args.resource == "gpu_hours" else None
        w.put_quota(args.tenant, args.resource, Quota(nominal, bl, ll), period)
    limits = [
        f"borrowing limit {bl:g}" if bl is not None else "borrows without limit",
        f"lending limit {ll:g}" if ll is not None else "lends all it does not use",
    ]
    text = (
        f"tenant {args.tenant}: {args.resource} nominal {nominal:g} "
        f"({', '.join(limits)}), cohort {cohort or '-'}"
    )
    return _said(
        args,
        text,
        nominal=nominal,
        borrowing_limit=bl,
        lending_limit=ll,
        cohort=cohort or None,
        priority=priority,
    )


def _set_cohort(w: GovernanceWrites, args: argparse.Namespace, quota: Quota | None) -> int:
    """``set --cohort C [--parent P] [--nominal N ...]``: the cohort's place and own quota."""
    from collector.governance.ops import validate_tenant_name  # noqa: PLC0415
    from collector.governance.quota import find_cycle  # noqa: PLC0415

    cohort: str = args.cohort
    w.put_cohort(cohort)
    gov = w.state()
    parent = gov.cohort_parents.get(cohort)
    said: list[str] = []
    if args.parent is not None:
        parent = None if args.parent == "-" else args.parent
        if parent is not None:
            validate_tenant_name(parent, what="cohort", field="--parent")
        parents: dict[str, str | None] = dict(gov.cohort_parents)
        parents[cohort] = parent
        cycle = find_cycle(parents)
        if cycle is not None:
            raise ConfigError(
                f"cohort {cohort} cannot have parent {parent}: parents would form a cycle "
                f"{' -> '.join(cycle)}; pick another --parent",
                field="--parent",
            )
        w.set_cohort_parent(cohort, parent)
        said.append(f"parent {parent or '-'}")
    if args.remove:
        w.put_cohort_quota(cohort, args.resource, None)
        said.append(f"{args.resource} quota removed")
    elif quota is not None:
        if parent is None and (quota.borrowing_limit, quota.lending_limit) != (None, None):
            raise ConfigError(
                f"cohort {cohort} has no parent: its borrowing and lending limits are towards "
                "a parent cohort; give --parent P (Kueue allows them only then)",
                field="--parent",
            )
        w.put_cohort_quota(cohort, args.resource, quota)
        said.append(_cohort_quota_text(args.resource, quota))
    elif args.parent is None:
        raise ConfigError("set --cohort needs --nominal N or --parent P", field="--nominal")
    return _said(
        args,
        f"cohort {cohort}: {', '.join(said)}",
        nominal=None if quota is None else quota.nominal,
        borrowing_limit=None if quota is None else quota.borrowing_limit,
        lending_limit=None if quota is None else quota.lending_limit,
        parent=parent,
    )


def _cohort_quota_text(resource: str, q: Quota) -> str:
    text = f"own {resource} quota {q.nominal:g}"
    if q.borrowing_limit is not None:
        text += f", borrowing limit {q.borrowing_limit:g}"
    if q.lending_limit is not None:
        text += f", lending limit {q.lending_limit:g}"
    return text


def _said(
    args: argparse.Namespace,
    text: str,
    *,
    nominal: float | None = None,
    borrowing_limit: float | None = None,
    lending_limit: float | None = None,
    cohort: str | None = None,
    priority: int | None = None,
    parent: str | None = None,
) -> int:
    """What `set` did: one line, or with --json the flags it applied as one object."""
    if not args.json:
        print(text)
        return 0
    row: dict[str, Any] = {"tenant": args.tenant, "resource": args.resource}
    row.update(
        nominal=nominal,
        borrowing_limit=borrowing_limit,
        lending_limit=lending_limit,
        cohort=cohort if args.tenant is not None else args.cohort,
        priority=priority,
        removed=bool(args.remove),
        message=text,
    )
    if args.tenant is None:
        row["parent"] = parent
    print_json(row)
    return 0


_SNAPSHOT_FRESH_S: Final = 60.0


class _Source(NamedTuple):
    name: str  # "collector" (its last evaluation) or "store" (computed from samples now)
    as_of: float


def _read(
    db: StoreTarget, now: float, busy_util: float, staleness: Staleness, *, from_store: bool
) -> tuple[Governance, list[Usage], _Source]:
    from collector.governance.fromstore import usages_from_store  # noqa: PLC0415
    from collector.store.governance import governance, usage_snapshot  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    with StoreReader(db) as store:
        if store.lacks("quotas"):
            raise ConfigError(
                f"{str(db)!r} has no quotas table yet: start this version's `collector run` "
                "once to migrate it"
            )
        gov = store.run(governance())
        if not from_store:
            snap = _snapshot(store.run(usage_snapshot()), gov, now, busy_util)
            if snap is not None:
                return gov, snap[0], snap[1]
        allocated, measured = usages_from_store(
            store, gov, now, busy_util_pct=busy_util, staleness=staleness
        )
    return gov, [allocated, measured], _Source("store", now)


def _snapshot(
    text: str | None, gov: Governance, now: float, busy_util: float
) -> tuple[list[Usage], _Source] | None:
    """The collector's usage if it is fresh, for this governance state and threshold."""
    import json  # noqa: PLC0415

    from collector.governance.usage import Usage  # noqa: PLC0415

    if text is None:
        return None
    try:
        snap = json.loads(text)
        at = float(snap["at"])
        if (
            not now - _SNAPSHOT_FRESH_S <= at <= now + 5.0
            or snap["generation"] != gov.generation
            or float(snap["busy_util_pct"]) != busy_util
        ):
            return None
        usages = []
        for basis in ("allocated", "measured"):
            by_resource = {
                str(r): {str(t): max(0.0, float(v)) for t, v in per.items()}
                for r, per in snap["usage"][basis].items()
            }
            usages.append(Usage(basis, by_resource))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # written by another version, or damaged: compute it instead
    return usages, _Source("collector", at)


def _known(gov: Governance, tenant: str) -> None:
    if tenant not in gov.tenants:
        known = ", ".join(sorted(gov.tenants)) or "none yet"
        raise ConfigError(f"no tenant {tenant!r} (tenants: {known})", field="tenant")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _source_line(source: _Source) -> str:
    import datetime as dt  # noqa: PLC0415

    when = dt.datetime.fromtimestamp(source.as_of, dt.UTC).strftime("%H:%M:%S UTC")
    if source.name == "collector":
        return f"usage as the running collector evaluated it at {when}"
    return f"usage computed from the store's samples at {when}"


def _show(args: argparse.Namespace, gov: Governance, usages: list[Usage], source: _Source) -> int:
    from collector.governance.report import overcommitted, standings  # noqa: PLC0415

    if args.tenant is not None:
        _known(gov, args.tenant)
    rows = [
        s.as_dict()
        for s in standings(gov, usages, tenants=None if args.tenant is None else [args.tenant])
    ]
    mine = None if args.tenant is None else gov.tenants.get(args.tenant)
    over = [
        c.as_dict() for c in overcommitted(gov, usages) if args.tenant is None or c.cohort == mine
    ]
    if args.json:
        print_json(
            {"source": source.name, "as_of": source.as_of, "quotas": rows, "overcommitted": over}
        )
        return 0
    if not rows:
        print("no quotas: set one with `collector quota set TENANT --resource gpus --nominal N`")
        return 0
    columns = [
        Column("tenant", "TENANT", align_right=False),
        Column("cohort", "COHORT", align_right=False),
        Column("resource", "RESOURCE", align_right=False),
        Column("basis", "BASIS", align_right=False),
        Column("nominal", "NOMINAL", _fmt),
        Column("in_use", "IN USE", _fmt),
        Column("pct", "%", _fmt),
        Column("borrowed", "BORROWED", _fmt),
        Column("lendable", "LENDABLE", _fmt),
        Column("available", "AVAILABLE", _fmt),
        Column("band", "STATE", align_right=False),
    ]
    print(render_table(rows, columns))
    for c in over:
        print(
            f"\nCOHORT {c['cohort']} OVERCOMMITTED on {c['resource']} ({c['basis']}): its "
            f"members hold {c['in_use']:g} of {c['quota']:g}; over their own limit: "
            f"{', '.join(c['over']) or '-'}"
        )
    print(f"\n{_source_line(source)}")
    return 0


def _tree(args: argparse.Namespace, gov: Governance, usages: list[Usage], source: _Source) -> int:
    """``show --tree``: the cohort tree of ``--resource``, per basis, each node's figures."""
    tree = gov.tree(args.resource)
    out: list[dict[str, Any]] = []
    for usage in usages:
        use = usage.of(args.resource)

        def cohort_node(name: str, use: dict[str, float] = use) -> dict[str, Any]:
            figures = {k: _round(v) for k, v in tree.cohort_figures(name, use).items()}
            kids, members = tree.children(name)
            children = [cohort_node(k) for k in kids] + [tenant_node(t, use) for t in members]
            return {"cohort": name, **figures, "children": children}

        def tenant_node(name: str, use: dict[str, float]) -> dict[str, Any]:
            f = tree.figures(name, use)
            q = gov.quotas[(name, args.resource)].quota
            return {
                "tenant": name,
                "nominal": f.nominal,
                "borrowing_limit": f.borrowing_limit,
                "lending_limit": q.lending_limit,
                "in_use": _round(f.usage),
                "available": _round(f.available),
                "limit": _round(f.limit),
                "state": "exceeded" if f.exceeded else ("borrowing" if f.borrowed else "ok"),
            }

        roots, alone = tree.roots()
        nodes = [cohort_node(c) for c in roots] + [tenant_node(t, use) for t in alone]
        out.append({"resource": args.resource, "basis": usage.basis, "tree": nodes})
    if args.json:
        print_json({"source": source.name, "as_of": source.as_of, "trees": out})
        return 0
    for t in out:
        print(f"{t['resource']} ({t['basis']} basis)")
        for i, node in enumerate(t["tree"]):
            _draw(node, "", last=i == len(t["tree"]) - 1)
        print()
    print(_source_line(source))
    return 0


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _limits(node: dict[str, Any]) -> str:
    parts = [f"nominal {_fmt(node['nominal'])}"]
    if node.get("borrowing_limit") is not None:
        parts.append(f"borrow <= {_fmt(node['borrowing_limit'])}")
    if node.get("lending_limit") is not None:
        parts.append(f"lend <= {_fmt(node['lending_limit'])}")
    return ", ".join(parts)


def _draw(node: dict[str, Any], prefix: str, *, last: bool) -> None:
    """One node of the tree and, below it, its children, with box-drawing branches."""
    branch = "└─ " if last else "├─ "
    if "cohort" in node:
        line = (
            f"{node['cohort']}/  {_limits(node)}; subtree {_fmt(node['subtree'])}, "
            f"guaranteed {_fmt(node['guaranteed'])}, in use {_fmt(node['in_use'])}, "
            f"available {_fmt(node['available'])}"
        )
    else:
        line = (
            f"{node['tenant']}  {_limits(node)}; in use {_fmt(node['in_use'])}, available "
            f"{_fmt(node['available'])}, limit {_fmt(node['limit'])} [{node['state']}]"
        )
    print(f"{prefix}{branch}{line}")
    children = node.get("children", [])
    for i, child in enumerate(children):
        _draw(child, prefix + ("   " if last else "│  "), last=i == len(children) - 1)


def _check(args: argparse.Namespace, gov: Governance, usages: list[Usage], source: _Source) -> int:
    if args.tenant is None:
        raise ConfigError("check needs a TENANT", field="tenant")
    if args.gpus is None:
        raise ConfigError("check needs --gpus N", field="--gpus")
    _number(args.gpus, "--gpus", "gpus")
    _known(gov, args.tenant)
    if (args.tenant, "gpus") not in gov.quotas:
        raise ConfigError(
            f"tenant {args.tenant} has no gpus quota, so nothing limits it: set one with "
            f"`collector quota set {args.tenant} --resource gpus --nominal N`",
            field="tenant",
        )
    tree = gov.tree("gpus")
    answers: list[dict[str, Any]] = []
    for usage in usages:
        a = tree.check(args.tenant, args.gpus, usage.of("gpus"))
        answers.append(
            {
                "tenant": args.tenant,
                "basis": usage.basis,
                "gpus": args.gpus,
                "admitted": a.admitted,
                "available": round(a.available, 3),
                "from_own": round(a.from_own, 3),
                "borrowed": round(a.borrowed, 3),
                "lenders": [{"from": n, "gpus": round(v, 3)} for n, v in a.lenders],
                "reclaimable": round(a.reclaimable, 3),
            }
        )
    if args.json:
        print_json({"source": source.name, "as_of": source.as_of, "checks": answers})
        return 0
    for ans in answers:
        verdict = "admitted" if ans["admitted"] else "NOT admitted"
        line = (
            f"{ans['basis']:>9}: {args.gpus:g} more GPUs for {args.tenant}: {verdict} "
            f"(available {ans['available']:g})"
        )
        if ans["admitted"] and ans["borrowed"]:
            lenders = ", ".join(f"{x['from']} {x['gpus']:g}" for x in ans["lenders"])
            line += f"; {ans['from_own']:g} from its own quota, borrows {ans['borrowed']:g} from "
            line += lenders or "the cohort"
        elif not ans["admitted"] and ans["reclaimable"]:
            line += f"; {ans['reclaimable']:g} of its own quota is lent out and reclaimable"
        print(line)
    return 0
