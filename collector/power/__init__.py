"""Power-cap solver: how many GPUs fit under a fixed MW cap, with a fabric that can be built.

Pure and typed; the only I/O is :func:`load_plan` reading a plan file. The pieces:

- :mod:`collector.power.model`: node types, fabric, site, plan (frozen dataclasses, checked).
- :mod:`collector.power.plan`: read JSON/TOML plans, including the old sizing tool's config.
- :mod:`collector.power.fabric`: fat-tree (radix, tiers, SUs, rails, planes, optics) and flat.
- :mod:`collector.power.solver`: :func:`solve_max` (most GPUs) and :func:`solve_fixed` (a
  given fleet's power, fabric and headroom: what the live headroom check calls).
- :mod:`collector.power.result`: what they answer (:class:`Solution` and its parts).
- :mod:`collector.power.sweep`: one parameter stepped through a range.
"""

from __future__ import annotations

from collector.power.fabric import FabricLayout, build_fabric, fat_tree_max_hosts, spine_count
from collector.power.model import (
    ComponentPower,
    Fabric,
    FabricModel,
    Media,
    Medium,
    NodeType,
    Optics,
    Plan,
    PowerBasis,
    Site,
    SwitchType,
)
from collector.power.plan import load_plan, parse_plan, with_param
from collector.power.result import (
    Binding,
    Budget,
    Constraint,
    FlatComparison,
    NodeGroup,
    PowerBreakdown,
    RackFill,
    RackLayout,
    Solution,
    SpareNodes,
)
from collector.power.solver import (
    MAX_NODES,
    compare_with_flat,
    it_budget,
    mix_counts,
    node_count,
    solve_fixed,
    solve_max,
)
from collector.power.sweep import SweepPoint, SweepSpec, parse_sweep, sweep

__all__ = [
    "MAX_NODES",
    "Binding",
    "Budget",
    "ComponentPower",
    "Constraint",
    "Fabric",
    "FabricLayout",
    "FabricModel",
    "FlatComparison",
    "Media",
    "Medium",
    "NodeGroup",
    "NodeType",
    "Optics",
    "Plan",
    "PowerBasis",
    "PowerBreakdown",
    "RackFill",
    "RackLayout",
    "Site",
    "Solution",
    "SpareNodes",
    "SweepPoint",
    "SweepSpec",
    "SwitchType",
    "build_fabric",
    "compare_with_flat",
    "fat_tree_max_hosts",
    "it_budget",
    "load_plan",
    "mix_counts",
    "node_count",
    "parse_plan",
    "parse_sweep",
    "solve_fixed",
    "solve_max",
    "spine_count",
    "sweep",
    "with_param",
]
