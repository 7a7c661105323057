"""The live power picture: each node's draw, the fleet's fabric and headroom from the solver.

Each node counts as :func:`collector.capacity.node.count_node` says (measured; else GPUs +
CPU + the unreported parts from a fresh sample; else assumed on ``stale_basis``; never above
its type's nameplate), in the rack every consumer names (:meth:`CapacityPlan.rack_of`).
:func:`compute_picture` then adds the unreported parts once this cycle's nodes have
calibrated them (:mod:`collector.capacity.calibrate`), sums the nodes per type, per rack (a
rack with a fresh PDU reading counts at it) and per how each draw was obtained.

The nameplate slack counts in the worst case whatever the basis: every node at its nameplate.
Then the solver (:func:`collector.power.solve_fixed`, fixed-fleet mode) builds the fabric
for the fleet's counts per type and answers the headroom and how many more nodes fit, with
each type at its mean live draw; and again with every node at nameplate (the worst case).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from collector.capacity.calibrate import RestFigure, rest_figure
from collector.capacity.config import CapacityPlan
from collector.capacity.node import Counted, NodeModel, TypeMatcher, count_node
from collector.capacity.picture import (
    OBTAINED,
    PDU,
    NodeDraw,
    Picture,
    RackDraw,
    RestBasis,
    StaleBasis,
    TypeDraw,
)
from collector.cooperate import YIELD_EVERY, yield_gil
from collector.nodefacts import DEFAULT_STALENESS, PowerReading, Staleness
from collector.power import Plan, PowerBasis, Solution, solve_fixed

if TYPE_CHECKING:  # annotations only: a what-if need not load the live view or the schema
    from collector.live import NodeState
    from shared.schema import Inventory

__all__ = ["compute_picture", "fleet_solution"]

_BY_NODE: Final = tuple(k for k in OBTAINED if k != PDU)
"""How a node's own draw is obtained (the ``draw_by`` keys; ``measured (pdu)`` only where a
rack was counted at its PDUs)."""
_LISTED: Final = 100
"""Names kept per list (unmatched, clamped, stale) in a picture."""


def fleet_solution(
    plan: Plan, counts: dict[str, int], totals: dict[str, float], *, basis: PowerBasis = "max"
) -> Solution:
    """``solve_fixed`` for a fleet whose nodes of each type draw ``totals[type]`` W together.

    Each type's per-node power is its mean, so the solver's node power is the total exactly.
    """
    node_power = {name: totals[name] / n for name, n in counts.items() if n > 0}
    if basis != plan.site.power_basis:
        plan = replace(plan, site=replace(plan.site, power_basis=basis))
    return solve_fixed(plan, counts, node_power_w=node_power)


def _next_binding(
    plan: Plan, counts: dict[str, int], totals: dict[str, float], name: str, more: int
) -> str | None:
    """What stops node ``more + 1`` of type ``name`` (at the type's mean live draw)."""
    grown = dict(counts)
    n = counts.get(name, 0)
    mean = totals[name] / n if n else next(t.max_w for t in plan.node_types if t.name == name)
    grown[name] = n + more + 1
    grown_totals = dict(totals)
    grown_totals[name] = totals.get(name, 0.0) + (more + 1) * mean
    s = fleet_solution(plan, grown, grown_totals, basis=plan.site.power_basis)
    return s.binding[0].constraint if s.binding else None


def _rack_by_pdu(
    pdu_w: float,
    by_type: dict[str, dict[str, float]],
    n_by_type: dict[str, dict[str, int]],
    *,
    totals: dict[str, float],
    type_by: dict[str, dict[str, float]],
    type_nodes_by: dict[str, dict[str, int]],
    site_by: dict[str, float],
    site_nodes_by: dict[str, int],
) -> None:
    """Count one rack at its PDUs' reading ``pdu_w`` instead of its nodes' sum: each node
    type's share of the rack moves from how it was obtained to :data:`PDU`, scaled so the
    rack sums to ``pdu_w`` (shared by node count when the nodes summed to 0 W)."""
    nodes_w = sum(w for t in by_type.values() for w in t.values())
    n_all = sum(n for t in n_by_type.values() for n in t.values())
    for name, by in by_type.items():
        type_w = sum(by.values())
        n = sum(n_by_type[name].values())
        share = pdu_w * (type_w / nodes_w if nodes_w > 0 else n / n_all)
        totals[name] += share - type_w
        for k, w in by.items():
            type_by[name][k] -= w
            site_by[k] -= w
        for k, m in n_by_type[name].items():
            type_nodes_by[name][k] -= m
            site_nodes_by[k] -= m
        type_by[name][PDU] = type_by[name].get(PDU, 0.0) + share
        type_nodes_by[name][PDU] = type_nodes_by[name].get(PDU, 0) + n
        site_by[PDU] = site_by.get(PDU, 0.0) + share
        site_nodes_by[PDU] = site_nodes_by.get(PDU, 0) + n


def compute_picture(
    cplan: CapacityPlan,
    nodes: Iterable[NodeState],
    now: float,
    *,
    staleness: Staleness = DEFAULT_STALENESS,
    stale_basis: StaleBasis = "nameplate",
    rest_basis: RestBasis = "calibrated",
    matcher: TypeMatcher | None = None,
    keep_nodes: bool = False,
    exclude: frozenset[str] = frozenset(),
    inventories: Mapping[str, Inventory] | None = None,
    rack_power: Mapping[str, PowerReading] | None = None,
) -> Picture:
    """The live picture of ``nodes`` at ``now`` (collector clock); see the module.

    ``inventories``: known inventories for nodes whose state has none (a restarted
    collector's view, until the agents reconnect); ``exclude``: nodes left out (a pool);
    ``rack_power``: each rack's draw read from its PDUs (counted while fresh).
    """
    t0 = time.perf_counter()
    plan = cplan.plan
    match = matcher or TypeMatcher(cplan)
    models = {t.name: NodeModel.of(t) for t in plan.node_types}
    residuals: dict[str, list[float]] = {name: [] for name in models}
    pending: list[Counted] = []
    unmatched: list[str] = []
    stale: list[str] = []
    n_unmatched = n_stale = n_unsampled = 0
    fallback_type, fallback_w = cplan.fallback_type, cplan.fallback_w
    rack_cache: dict[str, tuple[str, float | None]] = {}
    rack_limits: dict[str, float | None] = {}
    excluded_racks: set[str] = set()
    for i, st in enumerate(nodes):
        if not i % YIELD_EVERY:
            yield_gil()  # the evaluator runs this in a thread: see collector.cooperate
        if st.reject_only:
            continue
        if st.node in exclude:
            # its rack's PDUs still read it: that rack counts at its other nodes' sum
            excluded_racks.add(cplan.rack_of(st.node)[0])
            continue
        inv = st.inventory
        if inv is None and inventories:
            inv = inventories.get(st.node)
        name = match(st.node, inv)
        rack = rack_cache.get(st.node)
        if rack is None:
            rack = rack_cache[st.node] = cplan.rack_of(st.node)
        rack_limits.setdefault(rack[0], rack[1])
        if name is None:
            n_unmatched += 1
            if len(unmatched) < _LISTED:
                unmatched.append(st.node)
            pending.append(Counted.fallback(st.node, fallback_type, rack[0], fallback_w))
            continue
        c = count_node(st, models[name], rack[0], now, staleness=staleness, stale_basis=stale_basis)
        if c.residual_w is not None:
            residuals[name].append(c.residual_w)
        if c.stale:
            n_stale += 1
            if len(stale) < _LISTED:
                stale.append(st.node)
        if c.unsampled:
            n_unsampled += 1
        pending.append(c)
    figures: dict[str, RestFigure] = {
        name: rest_figure(rest_basis, m.parts_w, m.slack_w, residuals[name])
        for name, m in models.items()
    }
    counts = dict.fromkeys(models, 0)
    totals = dict.fromkeys(models, 0.0)
    worst = dict.fromkeys(models, 0.0)
    measured_n = dict.fromkeys(models, 0)
    type_by: dict[str, dict[str, float]] = {name: dict.fromkeys(_BY_NODE, 0.0) for name in models}
    type_nodes_by: dict[str, dict[str, int]] = {name: dict.fromkeys(_BY_NODE, 0) for name in models}
    rack_draw: dict[str, list[float]] = {}
    rack_by: dict[str, dict[str, float]] = {}
    site_by: dict[str, float] = dict.fromkeys(_BY_NODE, 0.0)
    site_nodes_by: dict[str, int] = dict.fromkeys(_BY_NODE, 0)
    clamped: list[str] = []
    n_clamped = n_measured = 0
    draws: list[NodeDraw] = []
    rack_type_by: dict[str, dict[str, dict[str, float]]] = {}
    rack_type_n: dict[str, dict[str, dict[str, int]]] = {}
    for e in pending:
        w, obtained, clamp, rest = e.draw_w, e.obtained, e.clamped, 0.0
        if e.needs_rest:
            fig = figures[e.node_type]
            rest = fig.rest_w
            w += rest
            if obtained == "modelled" and fig.rest_from == "calibrated":
                obtained = "calibrated"
            if w > e.nameplate_w:
                w, clamp = e.nameplate_w, True
        if e.basis == "measured":
            if clamp:
                n_clamped += 1
                if len(clamped) < _LISTED:
                    clamped.append(e.node)
            else:
                n_measured += 1
                measured_n[e.node_type] += 1
        counts[e.node_type] += 1
        totals[e.node_type] += w
        worst[e.node_type] += e.nameplate_w
        type_by[e.node_type][obtained] += w
        type_nodes_by[e.node_type][obtained] += 1
        site_by[obtained] += w
        site_nodes_by[obtained] += 1
        acc = rack_draw.get(e.rack)
        if acc is None:
            limit = rack_limits[e.rack]
            rack_draw[e.rack] = [1.0, w, limit if limit is not None else math.nan]
            rack_by[e.rack] = dict.fromkeys(_BY_NODE, 0.0)
        else:
            acc[0] += 1
            acc[1] += w
        rack_by[e.rack][obtained] += w
        in_rack = rack_type_by.setdefault(e.rack, {}).setdefault(e.node_type, {})
        in_rack[obtained] = in_rack.get(obtained, 0.0) + w
        in_rack_n = rack_type_n.setdefault(e.rack, {}).setdefault(e.node_type, {})
        in_rack_n[obtained] = in_rack_n.get(obtained, 0) + 1
        if keep_nodes:
            s = e.sensors
            draws.append(
                NodeDraw(
                    e.node,
                    None if e.basis == "fallback" else e.node_type,
                    e.rack,
                    w,
                    e.basis,
                    clamp,
                    () if s is None else s.per_gpu,
                    obtained,
                    e.node_power_w,
                    e.source,
                    0.0 if s is None else s.gpu_w,
                    0 if s is None else s.gpus_modelled,
                    0.0 if s is None else s.cpu_w,
                    False if s is None else s.cpu_measured,
                    rest,
                )
            )
    pdu_racks: dict[str, float] = {}
    if rack_power:
        # the wire schema's bound on one node's input power, per node of the rack: a broken
        # PDU or a wrong OID cannot move the site's draw without bound
        from shared.schema import MAX_NODE_POWER_W  # noqa: PLC0415 (see the imports)
    for r, reading in (rack_power or {}).items():
        acc = rack_draw.get(r)
        if acc is None or r in excluded_racks or not staleness.fresh(reading, now):
            continue  # no node counted there, some left out, or the reading is too old
        pdu_w = min(max(reading.watts, 0.0), acc[0] * MAX_NODE_POWER_W)
        pdu_racks[r] = acc[1]
        _rack_by_pdu(
            pdu_w,
            rack_type_by[r],
            rack_type_n[r],
            totals=totals,
            type_by=type_by,
            type_nodes_by=type_nodes_by,
            site_by=site_by,
            site_nodes_by=site_nodes_by,
        )
        acc[1] = pdu_w
        rack_by[r] = {**dict.fromkeys(_BY_NODE, 0.0), PDU: pdu_w}
    live = fleet_solution(plan, counts, totals, basis=plan.site.power_basis)
    worst_s = fleet_solution(plan, counts, worst, basis="max")
    racks = sorted(
        (
            RackDraw(
                rack=r,
                nodes=int(a[0]),
                draw_w=a[1],
                limit_w=None if math.isnan(a[2]) else a[2],
                draw_by=rack_by[r],
                nodes_w=pdu_racks.get(r),
            )
            for r, a in rack_draw.items()
        ),
        key=lambda r: (-(r.fraction or 0.0), -r.draw_w, r.rack),
    )
    more_live = {x.node_type: x.nodes for x in live.spare_nodes}
    more_worst = {x.node_type: x.nodes for x in worst_s.spare_nodes}
    types = tuple(
        TypeDraw(
            node_type=name,
            nodes=counts[name],
            measured=measured_n[name],
            draw_w=totals[name],
            nameplate_w=worst[name],
            more_live=more_live.get(name, 0),
            more_nameplate=more_worst.get(name, 0),
            next_binding=(
                _next_binding(plan, counts, totals, name, more_live.get(name, 0))
                if live.fits
                else None
            ),
            draw_by=type_by[name],
            nodes_by=type_nodes_by[name],
            rest_w=figures[name].rest_w,
            rest_from=figures[name].rest_from,
            rest_nodes=figures[name].nodes,
            rest_p25_w=figures[name].p25_w,
            rest_p75_w=figures[name].p75_w,
            model_rest_w=models[name].parts_w,
        )
        for name in models
    )
    over = [r for r in racks if r.over]
    if over:
        binding: str | None = "rack_power"
        detail = (
            f"{len(over)} rack(s) above their limit; {over[0].rack} draws "
            f"{over[0].draw_w:,.0f} W of {over[0].limit_w or 0:,.0f} W"
        )
    elif live.binding:
        binding, detail = live.binding[0].constraint, live.binding[0].detail
    else:
        nxt = [t.next_binding for t in types if t.next_binding]
        binding = nxt[0] if nxt else None
        detail = "what stops the next node" if nxt else ""
    budget = live.budget.it_budget_w
    it_w = live.power.total_it_w
    return Picture(
        at=now,
        plan=cplan.source,
        cap_w=budget,
        pue=live.budget.pue,
        nodes_w=live.power.nodes_w,
        fabric_w=live.power.fabric_w,
        it_w=it_w,
        facility_w=live.power.facility_w,
        headroom_w=live.headroom_w,
        headroom_pct=live.headroom_w / budget * 100 if budget > 0 else 0.0,
        worst_it_w=worst_s.power.total_it_w,
        worst_headroom_w=worst_s.headroom_w,
        nodes=sum(counts.values()),
        measured_nodes=n_measured,
        stale_basis=stale_basis,
        stale_nodes=n_stale,
        unsampled_nodes=n_unsampled,
        unmatched_nodes=n_unmatched,
        fallback_type=fallback_type,
        fallback_w=fallback_w,
        clamped_nodes=n_clamped,
        binding=binding,
        binding_detail=detail,
        fits=live.fits and not over,
        fabric_tiers=live.fabric.tiers,
        fabric_switches=live.fabric.switches,
        types=types,
        racks=tuple(racks),
        unmatched=tuple(unmatched),
        clamped=tuple(clamped),
        stale=tuple(stale),
        compute_ms=round((time.perf_counter() - t0) * 1000, 3),
        rest_basis=rest_basis,
        draw_by=site_by,
        nodes_by=site_nodes_by,
        node_draws=tuple(draws) if keep_nodes else None,
    )
