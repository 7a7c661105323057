"""What-if: the live fleet plus (or minus) some nodes, answered by the solver.

The live fleet is the picture's count and draw per node type; added nodes draw their type's
nameplate (``basis="max"``, the default: what a new node may draw) or its ``typical_w``.
:func:`collector.capacity.compute.fleet_solution` (``solve_fixed``) builds the fabric for the
grown fleet (maybe a new tier) and says whether it still fits and which constraint breaks.
Removing a pool is done before: the picture is computed without the pool's nodes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from collector.capacity.compute import fleet_solution
from collector.capacity.config import CapacityPlan
from collector.capacity.picture import Picture
from collector.power import node_count
from shared.errors import ConfigError

__all__ = ["WhatIf", "parse_add", "what_if"]


_COUNT_X_TYPE: Final = re.compile(r"([0-9]+)\s*[xX]\s*(\S.*)\Z")


def parse_add(text: str, known: list[str]) -> tuple[str, int]:
    """``TYPE=N`` or ``NxTYPE`` (``32xDGX-H100``) -> (type, count), the type checked."""
    name, sep, count = text.rpartition("=")
    m = None if sep else _COUNT_X_TYPE.match(text.strip())
    if sep:
        name = name.strip()
    elif m is not None:
        count, name = m.group(1), m.group(2).strip()
    else:
        raise ConfigError(
            f"--add {text!r}: write TYPE=N or NxTYPE, e.g. DGX-H100=32 or 32xDGX-H100",
            field="--add",
        )
    try:
        n = node_count(count, low=1)
    except ValueError as exc:
        raise ConfigError(
            f"--add {text!r}: the count {exc}, e.g. 32xDGX-H100", field="--add"
        ) from None
    if name not in known:
        raise ConfigError(
            f"--add {text!r}: the plan has no node type {name!r} (known: {', '.join(known)})",
            field="--add",
        )
    return name, n


@dataclass(frozen=True, slots=True, kw_only=True)
class WhatIf:
    """The answer to one what-if."""

    added: dict[str, int]
    basis: Literal["max", "typical"]
    added_node_w: dict[str, float]
    """Power each added node is counted at, per type."""
    nodes: int
    it_w: float
    """New IT draw: live draw, added nodes, the grown fabric."""
    added_w: float
    """New IT draw minus the live one (nodes and fabric growth)."""
    fabric_w: float
    fabric_delta_w: float
    fabric_tiers: int
    fabric_tiers_before: int
    switches: int
    switches_before: int
    cap_w: float
    headroom_w: float
    facility_w: float | None
    fits: bool
    breaks: str | None
    """The first constraint the grown fleet violates (``None``: it fits)."""
    detail: str


def what_if(
    cplan: CapacityPlan,
    picture: Picture,
    add: Mapping[str, int],
    *,
    basis: Literal["max", "typical"] = "max",
) -> WhatIf:
    """The live fleet of ``picture`` plus ``add`` nodes per type, through the solver."""
    plan = cplan.plan
    types = cplan.types
    stray = [t.node_type for t in picture.types if t.node_type not in types and t.nodes]
    if stray:
        raise ConfigError(
            f"the snapshot counts node types the plan lacks ({', '.join(stray)}): it was "
            "computed with another plan; add --now to recompute with this one",
            field="--plan",
        )
    counts = {t.node_type: t.nodes for t in picture.types if t.node_type in types}
    totals = {t.node_type: t.draw_w for t in picture.types if t.node_type in types}
    for name in types:
        counts.setdefault(name, 0)
        totals.setdefault(name, 0.0)
    node_w = {name: types[name].power_w(basis) for name in add}
    for name, n in add.items():
        counts[name] += n
        totals[name] += n * node_w[name]
    s = fleet_solution(plan, counts, totals, basis=plan.site.power_basis)
    breaks = s.binding[0] if s.binding else None
    return WhatIf(
        added=dict(add),
        basis=basis,
        added_node_w=node_w,
        nodes=s.nodes,
        it_w=s.power.total_it_w,
        added_w=s.power.total_it_w - picture.it_w,
        fabric_w=s.power.fabric_w,
        fabric_delta_w=s.power.fabric_w - picture.fabric_w,
        fabric_tiers=s.fabric.tiers,
        fabric_tiers_before=picture.fabric_tiers,
        switches=s.fabric.switches,
        switches_before=picture.fabric_switches,
        cap_w=s.budget.it_budget_w,
        headroom_w=s.headroom_w,
        facility_w=s.power.facility_w,
        fits=s.fits,
        breaks=breaks.constraint if breaks else None,
        detail=breaks.detail if breaks else "",
    )
