"""The power-cap solver: most GPUs under a cap (:func:`solve_max`), or the power, fabric
and headroom of a given fleet (:func:`solve_fixed`, what the live headroom check calls).

Pure and fast: no I/O, a binary search over the node count (total power never falls when a
node is added, so the fleets that fit are a prefix), about 20 fleet evaluations per solve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Final, Literal

from collector.power.fabric import FabricLayout, build_fabric, spine_count
from collector.power.model import ComponentPower, Plan, Site
from collector.power.result import (
    Binding,
    Budget,
    FlatComparison,
    NodeGroup,
    PowerBreakdown,
    RackFill,
    RackLayout,
    Solution,
    SpareNodes,
)
from shared.errors import PlanError

__all__ = [
    "MAX_NODES",
    "compare_with_flat",
    "it_budget",
    "mix_counts",
    "node_count",
    "solve_fixed",
    "solve_max",
]


MAX_NODES: Final = 10_000_000
"""The most nodes of one type a person may ask about (``collector solve --fixed``,
``collector capacity --add``): more is a typo, and the figures past it lose their digits."""


def node_count(text: str, *, low: int = 0) -> int:
    """A node count as a person typed it: ASCII digits only (:func:`int` would also take
    ``1_000`` and an Arabic-Indic ``٣``), within ``low``..:data:`MAX_NODES`. ``ValueError``
    saying which rule fails, for the caller to name its flag."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError("must be a whole number")
    n = int(text)
    if not low <= n <= MAX_NODES:
        raise ValueError(f"must be within {low}..{MAX_NODES:,}")
    return n


def it_budget(site: Site) -> Budget:
    """The IT power available to the fleet under ``site``'s caps, PUE and reserve."""
    it_cap_w = site.it_cap_mw * 1e6 if site.it_cap_mw is not None else None
    facility_cap_w = site.facility_cap_mw * 1e6 if site.facility_cap_mw is not None else None
    from_facility = (
        facility_cap_w / site.pue
        if facility_cap_w is not None and site.pue is not None
        else math.inf
    )
    cap_w = min(it_cap_w if it_cap_w is not None else math.inf, from_facility)
    return Budget(
        it_cap_w=it_cap_w,
        facility_cap_w=facility_cap_w,
        pue=site.pue,
        reserve_fraction=site.reserve_fraction,
        it_budget_w=cap_w * (1 - site.reserve_fraction) if site.reserve_fraction else cap_w,
        limited_by=(
            "it_power" if it_cap_w is not None and it_cap_w <= from_facility else "facility_power"
        ),
    )


@cache
def _mix_prefix(ratios: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Counts per type after the first j nodes of one whole set (j < sum of ratios).

    Each next node goes to the type furthest below its share, so counts only grow.
    """
    counts = [0] * len(ratios)
    prefix = [tuple(counts)]
    for _ in range(sum(ratios) - 1):
        best = max(range(len(ratios)), key=lambda i: (ratios[i] / (counts[i] + 1), -i))
        counts[best] += 1
        prefix.append(tuple(counts))
    return tuple(prefix)


def mix_counts(plan: Plan, nodes: int) -> tuple[int, ...]:
    """Nodes per type (plan order) for ``nodes`` nodes in the plan's ratios."""
    ratios = tuple(t.ratio for t in plan.node_types)
    sets, rest = divmod(nodes, sum(ratios))
    extra = _mix_prefix(ratios)[rest]
    return tuple(sets * r + e for r, e in zip(ratios, extra, strict=True))


@dataclass(frozen=True, slots=True)
class _Assessment:
    fleet: tuple[NodeGroup, ...]
    power: PowerBreakdown
    fabric: FabricLayout
    racks: RackLayout | None
    violations: tuple[Binding, ...]


def _racks(
    plan: Plan, counts: Sequence[int], node_ws: Sequence[float], fabric: FabricLayout
) -> RackLayout | None:
    site = plan.site
    if site.rack_power_kw is None and site.rack_units is None:
        return None
    rack_w = site.rack_power_kw * 1e3 if site.rack_power_kw is not None else None
    fills = []
    for t, n, node_w in zip(plan.node_types, counts, node_ws, strict=True):
        by_power = math.floor(rack_w / node_w) if rack_w is not None and node_w > 0 else None
        by_space = (
            site.rack_units // t.rack_units
            if site.rack_units is not None and t.rack_units is not None
            else None
        )
        limits = [x for x in (by_power, by_space) if x is not None]
        per_rack = max(1, min(limits)) if limits else max(1, n)
        limited_by: Literal["power", "space"] = (
            "power"
            if by_power is not None and (by_space is None or by_power < by_space)
            else "space"
        )
        fills.append(
            RackFill(
                node_type=t.name,
                nodes_per_rack=per_rack,
                by_power=by_power,
                by_space=by_space,
                limited_by=limited_by,
                racks=math.ceil(n / per_rack),
            )
        )
    node_racks = sum(f.racks for f in fills)
    network_racks = 0
    if fabric.switches:
        fab = plan.fabric
        switch_units = (
            fabric.leaves * fab.leaf.rack_units
            + fabric.spines * fab.spine.rack_units
            + fabric.cores * fab.core_switch.rack_units
        )
        network_racks = max(
            1,
            math.ceil(switch_units / site.rack_units) if site.rack_units else 0,
            math.ceil(fabric.switching_w / rack_w) if rack_w else 0,
        )
    used = [f for f, n in zip(fills, counts, strict=True) if n > 0]
    return RackLayout(
        fills=tuple(fills),
        node_racks=node_racks,
        network_racks=network_racks,
        racks=node_racks + network_racks,
        max_racks=site.max_racks,
        rack_power_binds=any(f.limited_by == "power" for f in used),
    )


def _assess(
    plan: Plan, counts: Sequence[int], node_ws: Sequence[float], budget: Budget
) -> _Assessment:
    basis = plan.site.power_basis
    fleet = []
    for t, n, node_w in zip(plan.node_types, counts, node_ws, strict=True):
        parts = t.components_max
        scale = node_w / parts.total_w if parts.total_w else 0.0
        fleet.append(
            NodeGroup(
                node_type=t.name,
                nodes=n,
                gpus=n * t.gpus_per_node,
                node_w=node_w,
                power_w=n * node_w,
                components=parts.scaled(n * scale),
            )
        )
    fabric = build_fabric(
        plan.fabric,
        [(n, t.fabric_ports) for t, n in zip(plan.node_types, counts, strict=True)],
        basis=basis,
    )
    nodes_w = sum(g.power_w for g in fleet)
    total_w = nodes_w + fabric.total_w
    power = PowerBreakdown(
        nodes_w=nodes_w,
        components=ComponentPower.total(g.components for g in fleet),
        leaf_switches_w=fabric.leaf_switches_w,
        spine_switches_w=fabric.spine_switches_w,
        core_switches_w=fabric.core_switches_w,
        switching_w=fabric.switching_w,
        optics_w=fabric.optics_w,
        dac_w=fabric.dac_w,
        fabric_w=fabric.total_w,
        total_it_w=total_w,
        facility_w=total_w * budget.pue if budget.pue is not None else None,
    )
    racks = _racks(plan, counts, node_ws, fabric)
    violations = []
    if not fabric.feasible:
        violations.append(Binding("fabric_radix", fabric.reason or "the fabric cannot be built"))
    if racks is not None and racks.max_racks is not None and racks.racks > racks.max_racks:
        violations.append(
            Binding(
                "rack_power" if racks.rack_power_binds else "rack_space",
                f"{racks.racks} racks needed ({racks.node_racks} for nodes, "
                f"{racks.network_racks} for switches); the site has {racks.max_racks}",
            )
        )
    if total_w > budget.it_budget_w:
        violations.append(
            Binding(
                budget.limited_by,
                f"{total_w:,.0f} W IT exceeds the {budget.it_budget_w:,.0f} W budget",
            )
        )
    return _Assessment(tuple(fleet), power, fabric, racks, tuple(violations))


def _solution(
    plan: Plan,
    a: _Assessment,
    budget: Budget,
    *,
    mode: Literal["max", "fixed"],
    binding: tuple[Binding, ...],
    spare: tuple[SpareNodes, ...] = (),
    notes: Sequence[str] = (),
) -> Solution:
    gpus = sum(g.gpus for g in a.fleet)
    total_w = a.power.total_it_w
    return Solution(
        mode=mode,
        fabric_model=plan.fabric.model,
        power_basis=plan.site.power_basis,
        fleet=a.fleet,
        nodes=sum(g.nodes for g in a.fleet),
        gpus=gpus,
        budget=budget,
        power=a.power,
        fabric=a.fabric,
        racks=a.racks,
        fits=not a.violations,
        headroom_w=budget.it_budget_w - total_w,
        binding=binding,
        gpus_per_it_mw=gpus / (total_w / 1e6) if total_w > 0 else 0.0,
        spare_nodes=spare,
        notes=tuple(notes),
    )


def _basis_notes(plan: Plan) -> list[str]:
    notes: list[str] = []
    if plan.site.power_basis == "typical":
        notes.extend(
            f"{t.name} has no typical_w; sized on its maximum {t.max_w:,.0f} W"
            for t in plan.node_types
            if t.typical_w is None
        )
    if plan.site.reserve_fraction:
        notes.append(f"a reserve of {plan.site.reserve_fraction:.1%} of the cap is held back")
    return notes


def _rack_notes(racks: RackLayout | None) -> list[str]:
    if racks is None:
        return []
    return [
        f"rack power limits {f.node_type} to {f.nodes_per_rack} nodes per rack"
        + (f" (space allows {f.by_space})" if f.by_space is not None else "")
        for f in racks.fills
        if f.limited_by == "power" and f.racks
    ]


def _largest_fitting(fits: Callable[[int], bool], hi: int) -> int:
    """Largest ``n`` in ``[0, hi)`` with ``fits(n)``, given ``fits(0)`` and not ``fits(hi)``."""
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _max_solution(plan: Plan) -> Solution:
    """The largest fleet in the plan's mix that fits (possibly 0 nodes)."""
    budget = it_budget(plan.site)
    node_ws = tuple(t.power_w(plan.site.power_basis) for t in plan.node_types)
    if not math.isfinite(budget.it_budget_w):  # pragma: no cover - the model needs a cap
        raise PlanError("the plan has no finite cap", field=plan.site_field("it_cap_mw"))
    hi = math.floor(budget.it_budget_w / min(node_ws)) + 1

    def fits(n: int) -> bool:
        return not _assess(plan, mix_counts(plan, n), node_ws, budget).violations

    best_n = _largest_fitting(fits, hi)
    best = _assess(plan, mix_counts(plan, best_n), node_ws, budget)
    nxt = _assess(plan, mix_counts(plan, best_n + 1), node_ws, budget)
    notes = _basis_notes(plan) + _rack_notes(best.racks)
    if nxt.fabric.tiers > best.fabric.tiers >= 1:
        extra = nxt.fabric.switches - best.fabric.switches
        extra_w = nxt.fabric.total_w - best.fabric.total_w
        notes.append(
            f"one more node would need a {nxt.fabric.tiers}-tier fabric: "
            f"+{extra} switches, +{extra_w:,.0f} W"
        )
    return _solution(plan, best, budget, mode="max", binding=nxt.violations, notes=notes)


def _binding_field(plan: Plan, binding: Binding) -> str:
    if binding.constraint == "it_power":
        return plan.site_field("it_cap_mw")
    if binding.constraint == "facility_power":
        return plan.site_field("facility_cap_mw")
    if binding.constraint in ("rack_power", "rack_space"):
        return plan.site_field("max_racks")
    return "fabric.max_tiers" if plan.fabric.max_tiers < 3 else "fabric.spine.ports"


def solve_max(plan: Plan, *, require_min_nodes: bool = True) -> Solution:
    """The most nodes (and GPUs) in the plan's mix that fit every constraint.

    Raises :class:`PlanError` naming the cap when fewer than ``min_nodes`` fit (e.g. a cap
    below one node), unless ``require_min_nodes`` is false (sweeps): then the answer may
    have fewer nodes, even none.
    """
    solution = _max_solution(plan)
    need = plan.site.min_nodes
    if require_min_nodes and solution.nodes < need:
        budget = solution.budget
        node_ws = tuple(t.power_w(plan.site.power_basis) for t in plan.node_types)
        smallest = _assess(plan, mix_counts(plan, need), node_ws, budget)
        binding = smallest.violations[0]
        names = ", ".join(f"{g.nodes} x {g.node_type}" for g in smallest.fleet if g.nodes)
        if binding.constraint in ("it_power", "facility_power"):
            message = (
                f"the IT budget of {budget.it_budget_w:,.0f} W is below the smallest fleet "
                f"({names}: {smallest.power.total_it_w:,.0f} W with its fabric)"
            )
        else:
            message = f"not even {need} node(s) fit: {binding.detail}"
        raise PlanError(message, field=_binding_field(plan, binding))
    return solution


def _check_names(plan: Plan, names: Iterable[str], arg: str) -> None:
    known = [t.name for t in plan.node_types]
    for name in names:
        if name not in known:
            raise PlanError(
                f"no node type {name!r} in the plan (known: {', '.join(known)})",
                field=f"{arg}[{name!r}]",
            )


def solve_fixed(
    plan: Plan,
    counts: Mapping[str, int],
    *,
    node_power_w: Mapping[str, float] | None = None,
) -> Solution:
    """Power, fabric, racks and headroom of a given fleet under the plan's caps.

    ``counts`` maps node type names to node counts (missing types: 0). ``node_power_w``
    replaces the per-node power of some types, e.g. with measured draw. The solution's
    ``fits`` says whether every constraint holds, ``binding`` lists those that do not,
    ``headroom_w`` is the IT budget left, and ``spare_nodes`` says how many more nodes of each
    type alone would still fit.
    """
    _check_names(plan, counts, "counts")
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise PlanError(
                f"node count must be a whole number ≥ 0, got {n!r}", field=f"counts[{name!r}]"
            )
    fleet_counts = tuple(counts.get(t.name, 0) for t in plan.node_types)
    overrides = dict(node_power_w or {})
    _check_names(plan, overrides, "node_power_w")
    for name, w in overrides.items():
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise PlanError(
                f"node power must be a finite number ≥ 0 W, got {w!r}",
                field=f"node_power_w[{name!r}]",
            )
    basis = plan.site.power_basis
    node_ws = tuple(float(overrides.get(t.name, t.power_w(basis))) for t in plan.node_types)
    budget = it_budget(plan.site)
    a = _assess(plan, fleet_counts, node_ws, budget)
    spare = []
    for i, t in enumerate(plan.node_types):

        def fits(extra: int, i: int = i) -> bool:
            grown = list(fleet_counts)
            grown[i] += extra
            return not _assess(plan, grown, node_ws, budget).violations

        more = 0
        if not a.violations:
            per_node_w = node_ws[i] or t.max_w
            more = _largest_fitting(fits, math.floor(budget.it_budget_w / per_node_w) + 1)
        spare.append(SpareNodes(t.name, more))
    notes = _basis_notes(plan) + _rack_notes(a.racks)
    notes.extend(
        f"{name}: measured {w:,.0f} W per node used instead of the plan's figure"
        for name, w in overrides.items()
    )
    return _solution(
        plan, a, budget, mode="fixed", binding=a.violations, spare=tuple(spare), notes=notes
    )


def compare_with_flat(plan: Plan, solution: Solution) -> FlatComparison | None:
    """The old tool's answer on this plan and the reasons capwatch's answer differs.

    ``None`` when the plan already uses the flat model.
    """
    if plan.fabric.model == "flat":
        return None
    flat = _max_solution(replace(plan, fabric=replace(plan.fabric, model="flat")))
    fab, spec = solution.fabric, plan.fabric
    k, d, u = spec.spine.ports, spec.leaf_host_ports, spec.leaf_uplink_ports
    reasons = []
    flat_leaves = flat.fabric.leaves
    if flat_leaves > k and spec.max_tiers >= 2:
        per_node = max(t.fabric_ports for t in plan.node_types)
        reasons.append(
            f"{flat_leaves} leaves cannot connect to {k}-port spines in two tiers: each "
            f"spine needs a port for every leaf, so two tiers stop at {k} leaves per plane "
            f"({k * d:,} host ports, {k * d // per_node:,} nodes of {per_node} ports)"
        )
        if fab.tiers == 3:
            reasons.append(
                f"capwatch builds a third tier instead: {fab.spines} aggregation and "
                f"{fab.cores} core switches for {fab.leaves} leaves "
                f"({fab.spine_switches_w + fab.core_switches_w:,.0f} W), "
                f"{fab.spine_core_links:,} more links"
            )
    elif fab.tiers == 2 and fab.planes == 1:
        even = spine_count(fab.leaves, u, k)
        plain = math.ceil(fab.leaves * u / k)
        if even is not None and even != plain:
            reasons.append(
                f"{even} spines, not ceil({fab.leaves}·{u}/{k}) = {plain}: the spine count "
                f"must divide each leaf's {u} uplinks evenly"
            )
    if spec.nodes_per_su is not None:
        reasons.append(
            f"leaves come in whole scalable units of {spec.nodes_per_su} node slots "
            f"({fab.scalable_units} SUs, {fab.rails} rails"
            + (f", {spec.reserved_node_slots} slot(s) reserved" if spec.reserved_node_slots else "")
            + ")"
        )
    if spec.planes > 1:
        reasons.append(f"{spec.planes} planes, each its own tree")
    if fab.dac_cables:
        reasons.append(
            f"{fab.dac_cables:,} DAC cables at {spec.dac_w_per_cable:g} W: "
            f"{fab.dac_w:,.0f} W that the old tool does not count"
        )
    if spec.optics.links_per_module > 1:
        reasons.append(
            f"optics counted per {spec.optics.links_per_module}-link module "
            f"({fab.optics_modules:,} x {spec.optics.module_w:g} W = {fab.optics_w:,.0f} W)"
        )
    if spec.media.host_leaf == "optics":
        reasons.append("host links use optics, which the old tool does not count")
    return FlatComparison(
        nodes=flat.nodes,
        gpus=flat.gpus,
        leaves=flat.fabric.leaves,
        leaf_spine_links=flat.fabric.leaf_spine_links,
        spines=flat.fabric.spines,
        total_it_w=flat.power.total_it_w,
        reasons=tuple(reasons),
    )
