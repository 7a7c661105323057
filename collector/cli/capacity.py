"""``collector capacity``: live draw against the site's cap, headroom, and what still fits.

Reads the newest capacity snapshot the collector stored (works while it runs); ``--now``
recomputes from each node's newest stored sample; ``--add`` asks the solver what more nodes
would draw and whether they fit; ``--remove POOL`` leaves a pool's nodes out. The picture
and the solver are :mod:`collector.capacity`; this module reads flags and prints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.capacity.picture import PDU
from collector.cli import COMMANDS
from collector.cli._args import (
    add_settings_args,
    defaults_but_the_store,
    refuse_other_actions_flags,
)
from collector.cli._render import Column, print_json, render_table, shown
from shared.errors import ConfigError

if TYPE_CHECKING:
    from collector.capacity.config import CapacityPlan
    from collector.capacity.picture import NodeDraw, Picture, RestBasis, StaleBasis, TypeDraw
    from collector.capacity.whatif import WhatIf
    from collector.nodefacts import Staleness
    from collector.paths import StoreTarget
    from collector.settings import CollectorSettings
    from collector.store.reader import StoreReader

__all__ = ["CapacityCliSettings", "add_parser", "load_settings_for", "run"]

_DESCRIPTION: Final = """\
Live power against the site's cap: IT draw, headroom (W and %), the worst case (every node
at nameplate), nodes counted at nameplate (stale, offline) or at the fallback (unmatched),
how many more nodes of each type fit (fabric growth included), the binding constraint and
the racks nearest their limit.

By default it shows the newest snapshot the collector stored (every capacity.interval_s,
when capacity.plan is set); --now, or --plan naming another plan than the snapshot's,
recomputes from each node's newest stored sample.

Every draw says how it was obtained: measured (the node's input power from its BMC or PSU
sensors), calibrated (GPUs + CPU read, the unreported parts from the median of node - GPUs -
CPU over the type's nodes that report all three), modelled (GPUs + CPU read, the rest from
the type's model; --rest-basis nameplate adds the nameplate slack), assumed (no fresh
reading: stale, offline, unmatched, awaiting a first sample). --explain NODE shows one
node's sum.

What-if: --add TYPE=N or --add NxTYPE (repeatable) adds nodes at their nameplate (or
--basis typical) and asks the solver: new draw, new fabric (maybe a new tier), fits or
not and which constraint breaks. --remove POOL leaves a pool's nodes out (decommission)."""

_EPILOG: Final = """\
examples:
  collector capacity
  collector capacity --now --plan site.toml
  collector capacity --add 32xDGX-H100
  collector capacity --add DGX-H100=32 --add HGX-B200=8 --json
  collector capacity --remove old-a100 --add 64xHGX-B200
  collector capacity --explain x1000c0s0b0n0
  collector capacity --now --rest-basis nameplate

exit status: 0 answered (with --add: the grown fleet fits); 1 the --add fleet does not fit;
2 a bad flag, plan or setting, or no snapshot yet (one line)."""

_OLD_SNAPSHOT_S: Final = 300.0
"""A snapshot older than this is called out (the collector writes one every 30 s)."""

_WORDS: Final = {
    "it_power": "IT power cap",
    "facility_power": "facility power cap (through PUE)",
    "rack_power": "a rack's power limit",
    "rack_space": "rack count",
    "fabric_radix": "fabric radix/tiers",
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector capacity``."""
    p = sub.add_parser(
        "capacity",
        help=COMMANDS["capacity"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument(
        "--plan",
        type=Path,
        metavar="FILE",
        help="site plan (.toml/.json, as `collector solve` reads); default: capacity.plan, "
        "else the newest snapshot's. Another plan than the snapshot's recomputes (as --now)",
    )
    p.add_argument("--now", action="store_true", help="recompute from the store's newest samples")
    p.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="TYPE=N|NxTYPE",
        help="what-if: add N nodes of TYPE (repeatable)",
    )
    p.add_argument(
        "--basis",
        choices=("max", "typical"),
        help="with --add: power of each added node: its nameplate (max, the default) or the "
        "type's typical_w",
    )
    p.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="POOL",
        help="what-if: leave the nodes of POOL out (recomputes from the store; repeatable)",
    )
    p.add_argument(
        "--stale-basis",
        choices=("nameplate", "last", "zero"),
        help="how stale/offline nodes count (implies --now; default: capacity.stale_basis)",
    )
    p.add_argument(
        "--rest-basis",
        choices=("calibrated", "model", "nameplate"),
        help="what unreported parts count at (implies --now; default: capacity.rest_basis)",
    )
    p.add_argument(
        "--explain",
        metavar="NODE",
        help="show how one node's draw was summed (implies --now)",
    )
    p.add_argument("--top", type=int, default=5, metavar="N", help="racks to show (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


class CapacityCliSettings(NamedTuple):
    """What ``collector capacity`` and ``collector plot`` need from the settings."""

    db_path: StoreTarget
    plan: Path | None
    staleness: Staleness
    stale_basis: StaleBasis
    rest_basis: RestBasis


def load_settings_for(
    args: argparse.Namespace, settings: CollectorSettings | None = None
) -> CapacityCliSettings:
    """What this command needs; without --config or a CAPWATCH_* variable but
    CAPWATCH_DB_PATH no pydantic (the store readers' fast path, :func:`defaults_but_the_store`).
    ``settings``: those the command has read already (``--config`` is read once: a pipe
    has no second reading)."""
    target = defaults_but_the_store(args) if settings is None else None
    if settings is None and target is not None:
        from collector.capacity.picture import (  # noqa: PLC0415
            DEFAULT_REST_BASIS,
            DEFAULT_STALE_BASIS,
        )
        from collector.nodefacts import DEFAULT_STALENESS  # noqa: PLC0415

        return CapacityCliSettings(
            target, args.plan, DEFAULT_STALENESS, DEFAULT_STALE_BASIS, DEFAULT_REST_BASIS
        )
    from collector.cli._args import settings_from_args  # noqa: PLC0415

    s = settings_from_args(args) if settings is None else settings
    return CapacityCliSettings(
        s.store_target,
        args.plan or s.capacity.plan,
        s.staleness(),
        s.capacity.stale_basis,
        s.capacity.rest_basis,
    )


def _plan(path: Path | None, picture_plan: str | None) -> CapacityPlan:
    from collector.capacity.config import load_capacity_plan  # noqa: PLC0415

    if path is None and picture_plan:
        path = Path(picture_plan)
    if path is None:
        raise ConfigError(
            "no site plan: pass --plan FILE or set capacity.plan in the settings",
            field="--plan",
        )
    return load_capacity_plan(path)


def newest_snapshot(
    reader: StoreReader, *, or_else: str = "", since: float | None = None
) -> dict[str, Any]:
    """The newest capacity snapshot the collector stored (its JSON data); one line and exit 2
    when there is none (``capacity`` and ``plot capacity`` alike), ending with ``or_else``
    (the command's own way without one), or none taken at or after ``since`` (``plot
    capacity --since``: the line says when the stored ones were taken)."""
    from collector.store.capacity import latest_snapshot, snapshot_span  # noqa: PLC0415

    data = latest_snapshot(reader)
    if data is None:
        raise ConfigError(
            "no capacity snapshot yet: set capacity.plan and let `collector run` "
            f"complete a cycle{or_else}",
            field="capacity.plan",
        )
    # The newest one's time is in its picture: the span is read only to say it.
    if since is not None and data["at"] < since and (span := snapshot_span(reader)) is not None:
        oldest, newest = (time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t)) for t in span)
        raise ConfigError(
            f"no capacity snapshot in the window: the stored ones were taken from {oldest} "
            f"to {newest}; widen --since",
            field="--since",
        )
    return data


def _snapshot(reader: StoreReader) -> Picture:
    """The newest capacity snapshot the collector stored."""
    from collector.capacity.picture import picture_from_dict  # noqa: PLC0415

    return picture_from_dict(newest_snapshot(reader, or_else=", or add --now --plan FILE"))


def _made_with(snapshot: Picture, plan: Path | None) -> bool:
    """Whether the snapshot was computed with ``plan`` (``None``: whichever the collector has)."""
    if plan is None:
        return True
    return bool(snapshot.plan) and Path(snapshot.plan).resolve() == plan.resolve()


def _recomputed(
    reader: StoreReader, s: CapacityCliSettings, args: argparse.Namespace, cplan: CapacityPlan
) -> tuple[Picture, str]:
    """The picture from each node's newest stored sample under ``cplan`` (without the pools
    of --remove), and a line saying so."""
    # the solver, the live view and the wire schema: only when recomputing
    from collector.capacity.compute import compute_picture  # noqa: PLC0415
    from collector.capacity.fromstore import nodes_from_store, racks_from_store  # noqa: PLC0415
    from collector.store.capacity import pool_members  # noqa: PLC0415

    source = "recomputed from the store's newest samples"
    removed: set[str] = set()
    for pool in args.remove:
        members = pool_members(reader, pool)
        if not members:
            raise ConfigError(
                f"--remove {pool!r}: no such pool, or it has no nodes (see `collector pool list`)",
                field="--remove",
            )
        removed |= members
    picture = compute_picture(
        cplan,
        nodes_from_store(reader),
        time.time(),
        staleness=s.staleness,
        stale_basis=args.stale_basis or s.stale_basis,
        rest_basis=args.rest_basis or s.rest_basis,
        exclude=frozenset(removed),
        keep_nodes=args.explain is not None,
        rack_power=racks_from_store(reader),
    )
    if removed:
        source += f", without {len(removed)} node(s) of pool(s) {', '.join(args.remove)}"
    return picture, source


def run(args: argparse.Namespace) -> int:
    """Print the capacity picture (and the what-if)."""
    from collector.store.reader import StoreReader  # noqa: PLC0415

    if args.top < 0:
        raise ConfigError(f"--top must be ≥ 0, got {args.top}", field="--top")
    if args.explain is not None and args.add:
        # --explain answers before the what-if: --add would be dropped without a word.
        raise ConfigError(
            "--add (a what-if of the whole fleet) goes without --explain (one node's draw in "
            "the picture): leave one out",
            field="--add",
        )
    refuse_other_actions_flags(
        "capacity",
        "--explain" if args.explain is not None else "a picture without --add",
        (("--basis", ("--add",), args.basis is not None and not args.add),),
    )
    s = load_settings_for(args)
    recompute = (
        args.now
        or bool(args.remove)
        or args.stale_basis is not None
        or args.rest_basis is not None
        or args.explain is not None
    )
    cplan: CapacityPlan | None = None
    with StoreReader(s.db_path) as reader:
        snapshot = None if recompute else _snapshot(reader)
        if snapshot is None or not _made_with(snapshot, args.plan):
            # --now and the like, or --plan naming another plan than the snapshot's; without
            # a plan, the one the collector's newest snapshot was made with
            from collector.store.capacity import snapshot_plan  # noqa: PLC0415

            cplan = _plan(s.plan, snapshot_plan(reader))
            picture, source = _recomputed(reader, s, args, cplan)
        else:
            picture = snapshot
            if args.add:
                cplan = _plan(s.plan, picture.plan)
            age = max(0.0, time.time() - picture.at)
            source = f"snapshot, {age:.0f} s old"
            if age > _OLD_SNAPSHOT_S:
                source += ": is the collector running? --now recomputes"
    if args.explain is not None:
        return _explain(picture, args.explain, as_json=args.json)
    answer = None
    if args.add and cplan is not None:
        from collector.capacity.whatif import parse_add, what_if  # noqa: PLC0415

        known = [t.name for t in cplan.plan.node_types]
        adds: dict[str, int] = {}
        for text in args.add:
            name, n = parse_add(text, known)
            adds[name] = adds.get(name, 0) + n
        answer = what_if(cplan, picture, adds, basis=args.basis or "max")
    if args.json:
        _print_json(picture, answer, source)
    else:
        print("\n".join(_lines(picture, source, args.top, brief=answer is not None)))
        if answer is not None:
            print("\n".join(["", *_whatif_lines(answer)]))
    return 0 if answer is None or answer.fits else 1


def _print_json(picture: Picture, answer: WhatIf | None, source: str) -> None:
    from dataclasses import asdict  # noqa: PLC0415

    from collector.capacity.picture import picture_to_dict  # noqa: PLC0415

    out: dict[str, Any] = {"source": source, "capacity": picture_to_dict(picture)}
    if answer is not None:
        out["what_if"] = asdict(answer)
    print_json(out)


def _kw(watts: float) -> str:
    return f"{watts / 1e3:,.1f} kW"


def _pct(part: float, whole: float) -> str:
    return f"{part / whole * 100:5.1f} %" if whole > 0 else "  - %"


def _lines(p: Picture, source: str, top: int, *, brief: bool = False) -> list[str]:
    """The picture at a glance; ``brief`` (a what-if follows): without the tables."""
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(p.at))
    facility = (
        f"   (facility {_kw(p.facility_w)} at PUE {p.pue:g})"
        if p.facility_w is not None and p.pue is not None
        else ""
    )
    unsampled = (
        f"{p.unsampled_nodes:,} awaiting a first sample at nameplate, " if p.unsampled_nodes else ""
    )
    counted = (
        f"{p.nodes:,}: {p.measured_nodes:,} from fresh samples, {p.stale_nodes:,} stale/offline at "
        f"{p.stale_basis}, {unsampled}{p.unmatched_nodes:,} unmatched at {_kw(p.fallback_w)} "
        f"({p.fallback_type}), {p.clamped_nodes:,} clamped to nameplate"
    )
    binding = _WORDS.get(p.binding or "", "none known")
    if p.binding_detail:
        binding += f": {shown(p.binding_detail)}"  # it may name a rack
    lines = [
        f"Site capacity at {when} ({source}); plan {p.plan or '-'}",
        f"  cap (IT budget)  {_kw(p.cap_w):>14}",
        f"  live IT draw     {_kw(p.it_w):>14}  {_pct(p.it_w, p.cap_w)}   (nodes "
        f"{_kw(p.nodes_w)} + fabric {_kw(p.fabric_w)}){facility}",
        f"  headroom         {_kw(p.headroom_w):>14}  {_pct(p.headroom_w, p.cap_w)}",
        f"  worst case       {_kw(p.worst_it_w):>14}  {_pct(p.worst_it_w, p.cap_w)}   "
        "(every node at nameplate)",
        f"  nodes            {counted}",
        f"  obtained         {_obtained(p.draw_by, p.nodes_by)}",
        f"  unreported parts {_REST_BASIS[p.rest_basis]} (rest_basis {p.rest_basis})",
        f"  binding          {binding}",
        f"  fits             {'yes' if p.fits else 'NO'}",
    ]
    if p.unmatched:
        more = "" if len(p.unmatched) == p.unmatched_nodes else ", ..."
        lines.append(f"  unmatched        {', '.join(p.unmatched[:10])}{more}")
    if p.clamped:
        lines.append(f"  clamped          {', '.join(p.clamped[:10])}")
    if brief:
        return lines
    rows = [
        {
            "type": t.node_type,
            "nodes": t.nodes,
            "draw": t.draw_w,
            "mean": t.draw_w / t.nodes if t.nodes else None,
            "rest": t,
            "measured": t.nodes_by.get("measured", 0),
            "more_live": t.more_live,
            "more_np": t.more_nameplate,
            "next": _WORDS.get(t.next_binding or "", t.next_binding),
        }
        for t in p.types
    ]
    lines += [
        "",
        render_table(
            rows,
            [
                Column("type", "NODE TYPE", align_right=False),
                Column("nodes", "NODES", lambda v: f"{v:,}"),
                Column("draw", "DRAW", _kw),
                Column("mean", "PER NODE", _kw),
                Column("measured", "MEASURED", lambda v: f"{v:,}"),
                Column("rest", "REST/NODE", _rest_cell, align_right=False),
                Column("more_live", "MORE (LIVE)", lambda v: f"{v:,}"),
                Column("more_np", "MORE (NAMEPLATE)", lambda v: f"{v:,}"),
                Column("next", "THEN LIMITED BY", align_right=False),
            ],
        ),
    ]
    limited = [r for r in p.racks if r.limit_w is not None]
    racks = limited[:top]
    if racks:
        lines += [
            "",
            f"Top racks by draw against limit ({len(limited):,} of {len(p.racks):,} racks have "
            "a limit)",
            render_table(
                [
                    {
                        "rack": r.rack,
                        "nodes": r.nodes,
                        "draw": r.draw_w,
                        "limit": r.limit_w,
                        "pct": (r.fraction or 0.0) * 100,
                        "over": "OVER" if r.over else "",
                        "how": PDU if r.by_pdu else "its nodes",
                    }
                    for r in racks
                ],
                [
                    Column("rack", "RACK", align_right=False),
                    Column("nodes", "NODES", lambda v: f"{v:,}"),
                    Column("draw", "DRAW", _kw),
                    Column("limit", "LIMIT", _kw),
                    Column("pct", "%", lambda v: f"{v:.1f}"),
                    Column("how", "OBTAINED", align_right=False),
                    Column("over", "", align_right=False),
                ],
            ),
        ]
    return lines


_REST_BASIS: Final = {
    "calibrated": "calibrated per node type from nodes reporting input power, else modelled",
    "model": "the type's model (DRAM, NVMe, NICs, aux), without nameplate slack",
    "nameplate": "the type's model plus nameplate slack (conservative)",
}


def _obtained(draw_by: dict[str, float], nodes_by: dict[str, int]) -> str:
    """``nodes_w`` split by how it was obtained, e.g. ``1.2 MW measured (150 nodes), ...``."""
    if not draw_by:
        return "- (a snapshot from before this was recorded)"
    keys = ["measured", "calibrated", "modelled", "assumed"]
    if nodes_by.get(PDU):
        keys.append(PDU)
    return ", ".join(f"{_kw(draw_by.get(k, 0.0))} {k} ({nodes_by.get(k, 0):,})" for k in keys)


def _rest_cell(t: TypeDraw) -> str:
    if t.rest_from == "calibrated":
        return f"{t.rest_w / 1e3:,.2f} kW calibrated (n={t.rest_nodes:,})"
    return f"{t.rest_w / 1e3:,.2f} kW {'modelled' if t.rest_from == 'model' else 'nameplate'}"


def _whatif_lines(w: WhatIf) -> list[str]:
    added = ", ".join(
        f"{n:,} x {name} at {_kw(w.added_node_w[name])}" for name, n in w.added.items()
    )
    basis = "nameplate" if w.basis == "max" else "typical draw"
    tiers = (
        f"{w.fabric_tiers_before} -> {w.fabric_tiers} tiers (a new tier)"
        if w.fabric_tiers > w.fabric_tiers_before
        else f"{w.fabric_tiers} tiers"
    )
    verdict = (
        "still fits"
        if w.fits
        else f"does NOT fit: {_WORDS.get(w.breaks or '', w.breaks)} breaks first"
    )
    lines = [
        f"What-if: add {added} ({basis})",
        f"  new IT draw      {_kw(w.it_w):>14}  {_pct(w.it_w, w.cap_w)}   (+{_kw(w.added_w)}, of "
        f"which fabric +{_kw(w.fabric_delta_w)})",
        f"  headroom         {_kw(w.headroom_w):>14}  {_pct(w.headroom_w, w.cap_w)}",
        f"  fabric           {tiers}, {w.switches_before:,} -> {w.switches:,} switches",
        f"  answer           {verdict}",
    ]
    if w.detail:
        lines.append(f"  why              {w.detail}")
    return lines


_SOURCES: Final = {
    "dcmi": "its BMC in band (IPMI DCMI)",
    "redfish": "its BMC's Redfish service",
    "hwmon": "its PSU sensors (hwmon)",
}


def _explain(p: Picture, node: str, *, as_json: bool) -> int:
    """Print how ``node``'s draw was summed."""
    draw = next((n for n in p.node_draws or () if n.node == node), None)
    if draw is None:
        raise ConfigError(
            f"--explain {node!r}: no such node in the picture (see `collector query`)",
            field="--explain",
        )
    t = next((x for x in p.types if x.node_type == draw.node_type), None)
    lines = _explain_lines(draw, t, p)
    rack = next((r for r in p.racks if r.rack == draw.rack and r.by_pdu), None)
    if rack is not None:
        lines.append(
            f"  its rack {shown(rack.rack)} counts at its PDUs' reading, {rack.draw_w:,.0f} W "
            f"({PDU}), not its {rack.nodes:,} nodes' sum {rack.nodes_w or 0.0:,.0f} W"
        )
    if as_json:
        from dataclasses import asdict  # noqa: PLC0415

        print_json(
            {
                "node": asdict(draw),
                "node_type": None if t is None else asdict(t),
                "rest_basis": p.rest_basis,
                "rack": None if rack is None else asdict(rack),
                "lines": lines,
            }
        )
    else:
        print("\n".join(lines))
    return 0


def _w(watts: float) -> str:
    return f"{watts:>9,.0f} W"


def _rest_words(t: TypeDraw) -> str:
    if t.rest_from == "calibrated":
        return (
            f"calibrated: median of node - GPUs - CPU over {t.rest_nodes:,} {t.node_type} "
            f"node(s) reporting all three (quartiles {t.rest_p25_w or 0:,.0f} - "
            f"{t.rest_p75_w or 0:,.0f} W; the model says {t.model_rest_w:,.0f} W)"
        )
    if t.rest_from == "model":
        return f"the type's model: DRAM + NVMe + NICs + aux at their maximum ({t.node_type})"
    slack = t.rest_w - t.model_rest_w
    return f"the model {t.model_rest_w:,.0f} W + nameplate slack {slack:,.0f} W (rest_basis)"


def _explain_lines(n: NodeDraw, t: TypeDraw | None, p: Picture) -> list[str]:
    kind = n.node_type or f"unmatched, as {p.fallback_type}"
    clamp = " (clamped to its nameplate)" if n.clamped else ""
    lines = [f"{shown(n.node)} ({kind}, rack {shown(n.rack)}): {n.draw_w:,.0f} W, {n.obtained}"]
    if n.basis == "fallback":
        lines.append(f"  fallback     {_w(n.draw_w)}   no node type matched: capacity.fallback_w")
        return lines
    if n.obtained == "measured":
        src = _SOURCES.get(n.node_power_source or "", shown(n.node_power_source or "-"))
        lines.append(f"  input power  {_w(n.node_power_w or 0.0)}   read by {src}{clamp}")
        if n.cpu_w or n.gpu_sum_w:
            rest = (n.node_power_w or 0.0) - n.gpu_sum_w - n.cpu_w
            lines.append(
                f"  (sensors: GPUs {n.gpu_sum_w:,.0f} W + CPU {n.cpu_w:,.0f} W; "
                f"node - GPUs - CPU = {rest:,.0f} W)"
            )
        return lines
    if n.obtained == "assumed":
        why = {
            "nameplate": "no fresh reading: counted at its nameplate",
            "zero": "stale or offline: counted at 0 W (stale_basis zero)",
            "last": "stale or offline: its last draw (stale_basis last)",
        }.get(n.basis, n.basis)
        lines.append(f"  assumed      {_w(n.draw_w)}   {why}{clamp}")
        if not n.rest_w:
            return lines
    gpus = len(n.gpu_w) + n.gpus_modelled
    gpu_note = f"{len(n.gpu_w)} of {gpus} measured" + (
        f", {n.gpus_modelled} at the type's gpu_w" if n.gpus_modelled else ""
    )
    lines += [
        f"  GPUs         {_w(n.gpu_sum_w)}   {gpu_note}",
        f"  CPU          {_w(n.cpu_w)}   "
        + ("RAPL package power" if n.cpu_measured else "the type's cpu_w (no RAPL reading)"),
        f"  rest         {_w(n.rest_w)}   " + (_rest_words(t) if t is not None else ""),
        f"  = draw       {_w(n.draw_w)}{clamp}",
    ]
    return lines
