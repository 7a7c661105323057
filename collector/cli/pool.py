"""``collector pool``: named sets of nodes, and sizing one to a clstr pattern."""

from __future__ import annotations

import argparse
import shlex
import time
from typing import TYPE_CHECKING, Final

from collector.cli import COMMANDS
from collector.cli._args import (
    ReadSettings,
    add_settings_args,
    node_names,
    read_settings_from_args,
    refuse_other_actions_flags,
)
from collector.cli._render import Column, free_text, print_json, render_table
from shared.errors import ConfigError
from shared.text import quoted

if TYPE_CHECKING:
    from collector.governance.allocate import Plan
    from collector.governance.inventory import NodeComponents
    from collector.paths import StoreTarget
    from collector.store.command import Command

__all__ = ["add_parser", "run"]

_DESCRIPTION: Final = """\
A pool is a named set of nodes (a tenant's share, a partition); `free` holds every node in
no pool, and a node is in at most one pool. State lives in the store (survives restarts).

  list                      pools with their node counts (and free)
  show NAME                 the pool's inventory table (`collector inventory NAME`)
  create NAME [--nodes N..] a new pool, with free nodes in it
  delete NAME               delete a pool; its nodes return to free
  add NAME NODE...          move free nodes into the pool
  remove NAME NODE...       move nodes of the pool back to free
  apply -p PATTERN          resize pool NAME of `NAME:component:qty(:component:qty)*` (e.g.
                            zinal:a100:4:epyc:30:memory:80) to at least those counts by moving
                            whole nodes between it and free, creating it if needed

apply matches each component as a case-insensitive substring of "<kind> <model>" (kinds:
cpu = sockets, gpu, memory = 16 GiB units, nic, accelerator); counts are of components and
round up to whole nodes. It chooses the FEWEST nodes (an integer program solved exactly by
SciPy's milp/HiGHS; greedy past a size limit, and says so), preferring nodes already in the
pool, then fewer racks (the plan's [[capacity.racks]], else xname cabinets); it never takes
a node that is not online or is leased (nor one given with --exclude), and releases the
nodes the pattern does not need, but never a leased one (a note names those it keeps;
`pool remove` shrinks a leased pool).
A leased pool's lease holds the nodes added to it: add and apply refuse growth that takes
its tenant past its quota at any time in the rest of the lease (naming the first such day),
unless --force --reason "why", which is recorded on the lease.
An impossible pattern changes nothing and says what is missing. --dry-run prints the
resulting inventory table and the moves and changes nothing."""

_EPILOG: Final = """\
examples:
  collector pool create zinal --nodes x1000c0s0b0n0 x1000c0s1b0n0
  collector pool apply -p zinal:a100:4:epyc:30:memory:80 --dry-run
  collector pool apply -p zinal:a100:16
  collector pool show zinal --json
  collector pool delete zinal

exit status: 0 done; 2 a bad flag, pattern, pool or node, an impossible pattern, or no
database (one line)."""

_ACTIONS: Final = ("list", "show", "create", "delete", "add", "remove", "apply")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector pool``."""
    p = sub.add_parser(
        "pool",
        help=COMMANDS["pool"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument("action", choices=_ACTIONS, help="what to do")
    p.add_argument("words", nargs="*", metavar="NAME [NODE ...]", help="pool, then nodes")
    p.add_argument(
        "--nodes",
        nargs="+",
        default=[],
        metavar="NODE",
        help="with create: the nodes, separated by spaces or commas (as lease add --nodes)",
    )
    p.add_argument("-p", "--pattern", help="with apply: NAME:component:qty(:component:qty)*")
    p.add_argument("--dry-run", action="store_true", help="with apply: change nothing")
    p.add_argument(
        "--exclude", nargs="+", default=[], metavar="NODE", help="with apply: never move these"
    )
    p.add_argument("--comment", default="", help="with create/apply: what the pool is for")
    p.add_argument(
        "--force",
        action="store_true",
        help="with add/apply: grow a leased pool even beyond its tenant's quota (recorded)",
    )
    p.add_argument("--reason", help="with --force: why (recorded with the lease)")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch one pool action."""
    settings = read_settings_from_args(args)
    refuse_other_actions_flags(
        "pool",
        args.action,
        (
            ("--nodes", ("create",), bool(args.nodes)),
            ("-p", ("apply",), args.pattern is not None),
            ("--dry-run", ("apply",), args.dry_run),
            ("--exclude", ("apply",), bool(args.exclude)),
            ("--comment", ("create", "apply"), bool(args.comment)),
            ("--force", ("add", "apply"), args.force),
            ("--reason", ("add", "apply"), args.reason is not None),
        ),
    )
    words: list[str] = args.words
    if args.action == "apply":
        if args.pattern is None:
            raise ConfigError("apply needs -p PATTERN (e.g. zinal:a100:4:epyc:30)", field="-p")
        if words:
            raise ConfigError("apply takes the pool from the pattern: drop " + " ".join(words))
        return _apply(settings, args)
    if args.action == "list":
        return _list(settings, as_json=args.json)
    if not words:
        raise ConfigError(f"{args.action} needs the pool's NAME", field="NAME")
    name, nodes = words[0], words[1:]
    if args.action == "show":
        return _show(settings, name, as_json=args.json)
    if args.action in ("add", "remove") and not nodes:
        raise ConfigError(f"{args.action} needs at least one NODE", field="NODE")
    if args.action in ("create", "delete") and nodes:
        raise ConfigError(f"{args.action} takes only NAME (create: --nodes for nodes)")
    return _change(
        settings.store_target,
        args.action,
        name,
        list(node_names(nodes or args.nodes)),
        args.comment,
        as_json=args.json,
        force_reason=_forced(args),
    )


def _forced(args: argparse.Namespace) -> str | None:
    """``--force``: the reason recorded on a lease its pool's growth takes past quota."""
    if args.reason is not None and not args.force:
        raise ConfigError("--reason goes with --force", field="--reason")
    return (args.reason or "forced without a reason") if args.force else None


def _nodes(settings: ReadSettings) -> list[NodeComponents]:
    from collector.cli.inventory import load_nodes  # noqa: PLC0415

    return load_nodes(settings)


def _list(settings: ReadSettings, *, as_json: bool) -> int:
    from collector.store.pools import pools  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    with StoreReader(settings.store_target) as store:
        rows = pools(store)
    free = sum(1 for n in _nodes(settings) if n.pool == "free")
    rows.append({"name": "free", "created": None, "comment": "nodes in no pool", "nodes": free})
    if as_json:
        print_json({"pools": rows})
        return 0
    print(
        render_table(
            rows,
            [
                Column("name", "POOL", align_right=False),
                Column("nodes", "NODES"),
                Column("comment", "COMMENT", free_text, align_right=False),
            ],
        )
    )
    return 0


def _show(settings: ReadSettings, name: str, *, as_json: bool) -> int:
    from collector.cli.inventory import inventory_json, inventory_table  # noqa: PLC0415

    nodes = [n for n in _nodes(settings) if n.pool == name]
    if name != "free" and not nodes:
        _require_pool(settings.store_target, name)
    if as_json:
        print_json({"pool": name, **inventory_json(nodes)})
    else:
        print(inventory_table(nodes) if nodes else f"pool {name} has no nodes")
    return 0


def _require_pool(db: StoreTarget, name: str) -> None:
    from collector.store.pools import pools  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    with StoreReader(db) as store:
        names = [p["name"] for p in pools(store)]
    if name not in names:
        raise ConfigError(
            f"no pool {name!r}: pools are {', '.join(['free', *names])} (`collector pool list`)"
        )


def _change(
    db: StoreTarget,
    action: str,
    name: str,
    nodes: list[str],
    comment: str,
    *,
    as_json: bool = False,
    force_reason: str | None = None,
) -> int:
    from collector.governance.ops import judge_growth  # noqa: PLC0415
    from collector.governance.pattern import validate_pool_name  # noqa: PLC0415
    from collector.store.command import Command  # noqa: PLC0415
    from collector.store.pools import FREE, pool_members, unknown_nodes  # noqa: PLC0415

    if action != "delete":
        validate_pool_name(name)
    nodes = list(dict.fromkeys(nodes))  # a node named twice moves once
    with Command(db, now=time.time()) as tx:
        exists = tx.pools.exists(name)
        if action == "create":
            if exists:
                raise ConfigError(f"pool {name!r} exists already (add nodes with `pool add`)")
            tx.pools.create(name, comment)
        elif not exists or name == FREE:
            raise ConfigError(f"no pool {name!r} (`collector pool list`)", field="NAME")
        if action == "delete":
            _refuse_a_held_pool(tx, name)
            moved = tx.pools.delete(name)
            if as_json:
                print_json({"pool": name, "action": action, "nodes": sorted(moved)})
            else:
                print(f"pool {name} deleted; {len(moved)} nodes returned to free")
            return 0
        members = pool_members(tx)
        unknown = set(unknown_nodes(tx, nodes)) if action != "remove" else set()
        for node in nodes:
            where = members.get(node, FREE)
            if action == "remove" and where != name:
                raise ConfigError(f"node {node!r} is not in pool {name!r} (it is in {where})")
            if node in unknown:
                raise ConfigError(f"unknown node {node!r}: no agent or declared inventory")
            if action != "remove" and where not in (FREE, name):
                raise ConfigError(
                    f"node {node!r} is in pool {where!r}: a node is in at most one pool; "
                    f"`collector pool remove {where} {node}` first"
                )
        target = FREE if action == "remove" else name
        judge_growth(tx, tx.pools.move(nodes, target, action), force_reason=force_reason)
    if as_json:
        print_json({"pool": name, "action": action, "nodes": nodes})
        return 0
    verb = {"create": "created with", "add": "gained", "remove": "released"}[action]
    print(f"pool {name} {verb} {len(nodes)} nodes")
    return 0


def _refuse_a_held_pool(tx: Command, name: str) -> None:
    """:class:`ConfigError` if a lease that has not ended holds pool ``name``: deleting it
    left the lease naming no pool and holding no node (its GPU-hours stopped), unsaid."""
    held = [
        lease
        for lease in tx.governance.state().leases
        if lease.pool == name and lease.status(tx.now) != "expired"
    ]
    if held:
        lease = held[0]
        raise ConfigError(
            f"pool {name} is held by lease {quoted(lease.name)} (tenant {lease.tenant}, "
            f"{lease.status(tx.now)}): deleting it would empty the lease; cancel the lease "
            f"(`collector lease cancel {shlex.quote(lease.name)}`) and delete the pool once "
            f"it has ended, or shrink it with `collector pool remove {name} NODE...`",
            field="NAME",
        )


def _apply(settings: ReadSettings, args: argparse.Namespace) -> int:
    from collector.governance.allocate import plan_pool  # noqa: PLC0415
    from collector.governance.ops import judge_growth  # noqa: PLC0415
    from collector.governance.pattern import parse_pattern  # noqa: PLC0415
    from collector.store.command import Command  # noqa: PLC0415
    from collector.store.pools import FREE, pool_members, unended_lease_nodes  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    pattern = parse_pattern(args.pattern, field="-p")
    nodes = _nodes(settings)
    with StoreReader(settings.store_target) as store:
        excluded = unended_lease_nodes(store, time.time()) | set(args.exclude)
        before = pool_members(store)
    plan = plan_pool(nodes, pattern, excluded=excluded)
    if not args.dry_run:
        # Plan on a read snapshot (the solve must not hold the write lock the collector's
        # writer needs), then write only if no pool command moved a node in between.
        with Command(settings.store_target, now=time.time()) as tx:
            if pool_members(tx) != before:
                raise ConfigError("pools changed while planning: run the command again")
            if not tx.pools.exists(plan.pool):
                tx.pools.create(plan.pool, args.comment)
            reason = f"apply {pattern}"
            tx.pools.move(plan.release, FREE, reason)
            grown = tx.pools.move(plan.take, plan.pool, reason)
            judge_growth(tx, grown, force_reason=_forced(args))
    _print_plan(plan, nodes, as_json=args.json, dry_run=args.dry_run)
    return 0


def _print_plan(plan: Plan, nodes: list[NodeComponents], *, as_json: bool, dry_run: bool) -> None:
    import dataclasses  # noqa: PLC0415

    from collector.cli.inventory import inventory_json, inventory_table  # noqa: PLC0415

    final = set(plan.final)
    after = [dataclasses.replace(n, pool=plan.pool) for n in nodes if n.node in final]
    needs = {n.term: n.qty for n in plan.pattern.needs}
    if as_json:
        print_json(
            {
                "pool": plan.pool,
                "pattern": str(plan.pattern),
                "dry_run": dry_run,
                "nodes": plan.final,
                "take": plan.take,
                "release": plan.release,
                "units": plan.units,
                "needs": needs,
                "method": plan.method,
                "greedy_nodes": plan.greedy_nodes,
                "racks": plan.racks,
                "solve_s": round(plan.solve_s, 3),
                "count_s": round(plan.count_s, 3),
                "notes": plan.notes,
                "inventory": inventory_json(after),
            }
        )
        return
    keep = len(plan.final) - len(plan.take)
    print(
        f"pool {plan.pool}: {len(plan.final)} nodes in {plan.racks} "
        f"{'rack' if plan.racks == 1 else 'racks'} "
        f"(keep {keep}, take {len(plan.take)}, release {len(plan.release)})"
    )
    print("  " + "   ".join(f"{t}: {plan.units[t]} (need {q})" for t, q in needs.items()))
    if plan.method == "milp":
        how = f"fewest nodes proven (milp/HiGHS) in {plan.count_s:.2f} s, plan"
    else:
        how = "greedy"
    print(f"  {how} in {plan.solve_s:.2f} s; greedy would take {plan.greedy_nodes} nodes")
    for note in plan.notes:
        print(f"  note: {note}")
    for node in plan.take:
        print(f"take     {node}  free -> {plan.pool}")
    for node in plan.release:
        print(f"release  {node}  {plan.pool} -> free")
    if after:
        print(inventory_table(after))
    print("dry run: nothing changed" if dry_run else "applied")
