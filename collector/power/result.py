"""What the solver answers: the fleet, its power breakdown, fabric, racks and headroom.

All frozen dataclasses; ``dataclasses.asdict`` turns a :class:`Solution` into JSON-ready data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from collector.power.fabric import FabricLayout
from collector.power.model import ComponentPower, FabricModel, PowerBasis

__all__ = [
    "Binding",
    "Budget",
    "Constraint",
    "FlatComparison",
    "NodeGroup",
    "PowerBreakdown",
    "RackFill",
    "RackLayout",
    "Solution",
    "SpareNodes",
]

Constraint = Literal["it_power", "facility_power", "rack_power", "rack_space", "fabric_radix"]
"""What stops the next node: the IT cap, the facility cap (through PUE), the rack count with
racks filled by power or by space, or a fabric that cannot connect more leaves."""


@dataclass(frozen=True, slots=True)
class Binding:
    """One constraint that binds, with a sentence of numbers."""

    constraint: Constraint
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """The IT power available to the fleet, in watts."""

    it_cap_w: float | None
    facility_cap_w: float | None
    pue: float | None
    reserve_fraction: float
    it_budget_w: float
    """min(IT cap, facility cap / PUE) x (1 - reserve)."""
    limited_by: Literal["it_power", "facility_power"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeGroup:
    """The nodes of one type in a fleet."""

    node_type: str
    nodes: int
    gpus: int
    node_w: float
    """Power of one node (on the plan's basis, or measured)."""
    power_w: float
    components: ComponentPower
    """Power of all nodes of the type, by component."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerBreakdown:
    """Where the IT power goes, in watts."""

    nodes_w: float
    components: ComponentPower
    leaf_switches_w: float
    spine_switches_w: float
    core_switches_w: float
    switching_w: float
    optics_w: float
    dac_w: float
    fabric_w: float
    total_it_w: float
    facility_w: float | None
    """Total IT power times PUE, when the site has a PUE."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RackFill:
    """How one node type fills racks."""

    node_type: str
    nodes_per_rack: int
    by_power: int | None
    """Nodes that the rack power limit allows (``None``: no limit)."""
    by_space: int | None
    """Nodes that the rack's units allow (``None``: no limit)."""
    limited_by: Literal["power", "space"]
    racks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RackLayout:
    """Racks for nodes (one type per rack) and for switches."""

    fills: tuple[RackFill, ...]
    node_racks: int
    network_racks: int
    racks: int
    max_racks: int | None
    rack_power_binds: bool
    """Rack power, not space, sets how many nodes a rack holds (for a type in the fleet)."""


@dataclass(frozen=True, slots=True)
class SpareNodes:
    """How many more nodes of one type would still fit (fixed mode)."""

    node_type: str
    nodes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Solution:
    """The answer: fleet, power breakdown, fabric, racks, headroom, binding constraint."""

    mode: Literal["max", "fixed"]
    fabric_model: FabricModel
    power_basis: PowerBasis
    fleet: tuple[NodeGroup, ...]
    nodes: int
    gpus: int
    budget: Budget
    power: PowerBreakdown
    fabric: FabricLayout
    racks: RackLayout | None
    fits: bool
    headroom_w: float
    """IT budget left after the fleet (negative: over the cap)."""
    binding: tuple[Binding, ...]
    """Max mode: what stops one more node. Fixed mode: what the fleet violates."""
    gpus_per_it_mw: float
    """GPUs per MW of IT power drawn."""
    spare_nodes: tuple[SpareNodes, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FlatComparison:
    """The old tool's (flat model's) answer on the same plan, and why capwatch differs."""

    nodes: int
    gpus: int
    leaves: int
    leaf_spine_links: int
    spines: int
    total_it_w: float
    reasons: tuple[str, ...]
