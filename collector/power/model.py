"""The typed model of a power plan: node types, fabric and site.

Every value is a frozen dataclass. :class:`Plan` checks its invariants when it is built, so a
plan changed with :func:`dataclasses.replace` (a sweep point, a measured override) is checked
again. A broken invariant raises :class:`shared.errors.PlanError` whose ``field`` is the path
as the plan file spells it (``node.gpu_w`` in the old tool's config, ``node_types[0].gpu_w``
in capwatch's own format).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from shared.errors import PlanError

__all__ = [
    "ComponentPower",
    "Fabric",
    "FabricModel",
    "Media",
    "Medium",
    "NodeType",
    "Optics",
    "Plan",
    "PowerBasis",
    "Site",
    "SwitchType",
]

FabricModel = Literal["fat_tree", "flat"]
"""``fat_tree``: radix-aware, tiered, SU/rail/plane-aware; ``flat``: the old tool's model."""
Medium = Literal["dac", "optics"]
"""Cable medium of one hop: passive copper inside a rack, optical modules between racks."""
PowerBasis = Literal["max", "typical"]
"""Size on nameplate maximum (safe) or on the typical figure (denser, needs power capping)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentPower:
    """Power of one node (or a sum of nodes) split by component, in watts."""

    gpu_w: float = 0.0
    cpu_w: float = 0.0
    dram_w: float = 0.0
    nvme_w: float = 0.0
    nic_w: float = 0.0
    aux_w: float = 0.0
    other_w: float = 0.0
    """Nameplate maximum above the sum of the listed components (fans, PSU losses)."""

    @property
    def total_w(self) -> float:
        """Sum of all components."""
        return (
            self.gpu_w
            + self.cpu_w
            + self.dram_w
            + self.nvme_w
            + self.nic_w
            + self.aux_w
            + self.other_w
        )

    def scaled(self, factor: float) -> ComponentPower:
        """Every component multiplied by ``factor`` (a node count, or typical/max)."""
        return ComponentPower(
            gpu_w=self.gpu_w * factor,
            cpu_w=self.cpu_w * factor,
            dram_w=self.dram_w * factor,
            nvme_w=self.nvme_w * factor,
            nic_w=self.nic_w * factor,
            aux_w=self.aux_w * factor,
            other_w=self.other_w * factor,
        )

    @staticmethod
    def total(parts: Iterable[ComponentPower]) -> ComponentPower:
        """Component-wise sum."""
        out = ComponentPower()
        for p in parts:
            out = ComponentPower(
                gpu_w=out.gpu_w + p.gpu_w,
                cpu_w=out.cpu_w + p.cpu_w,
                dram_w=out.dram_w + p.dram_w,
                nvme_w=out.nvme_w + p.nvme_w,
                nic_w=out.nic_w + p.nic_w,
                aux_w=out.aux_w + p.aux_w,
                other_w=out.other_w + p.other_w,
            )
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeType:
    """One kind of GPU node: per-component maximum power and its ports into the fabric.

    The component sum is the node's maximum unless ``nameplate_w`` says more (fans, PSU
    losses); ``typical_w`` is what it draws in normal training (defaults to the maximum).
    ``ratio`` weighs the type in a mixed fleet: ratios 3 and 1 add three of the first type
    for each one of the second.
    """

    name: str
    gpus_per_node: int
    gpu_w: float
    nics_per_node: int
    cpu_w: float = 0.0
    dram_w: float = 0.0
    nvme_w: float = 0.0
    nic_w: float = 0.0
    node_aux_w: float = 0.0
    ports_per_nic_to_fabric: int = 1
    nameplate_w: float | None = None
    typical_w: float | None = None
    rack_units: int | None = None
    ratio: int = 1

    @property
    def fabric_ports(self) -> int:
        """Ports this node plugs into the fabric (all planes together)."""
        return self.nics_per_node * self.ports_per_nic_to_fabric

    @property
    def components_max(self) -> ComponentPower:
        """Per-component maximum of one node; ``other_w`` is nameplate above the sum."""
        parts = ComponentPower(
            gpu_w=self.gpus_per_node * self.gpu_w,
            cpu_w=self.cpu_w,
            dram_w=self.dram_w,
            nvme_w=self.nvme_w,
            nic_w=self.nics_per_node * self.nic_w,
            aux_w=self.node_aux_w,
        )
        if self.nameplate_w is not None and self.nameplate_w > parts.total_w:
            return ComponentPower(
                gpu_w=parts.gpu_w,
                cpu_w=parts.cpu_w,
                dram_w=parts.dram_w,
                nvme_w=parts.nvme_w,
                nic_w=parts.nic_w,
                aux_w=parts.aux_w,
                other_w=self.nameplate_w - parts.total_w,
            )
        return parts

    @property
    def max_w(self) -> float:
        """Nameplate maximum of one node."""
        return self.components_max.total_w

    def power_w(self, basis: PowerBasis) -> float:
        """Power of one node on ``basis``."""
        if basis == "typical" and self.typical_w is not None:
            return self.typical_w
        return self.max_w


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchType:
    """One switch model: radix (ports), maximum and typical power, height in rack units."""

    ports: int
    switch_w: float
    name: str = "switch"
    typical_w: float | None = None
    rack_units: int = 1

    def power_w(self, basis: PowerBasis) -> float:
        """Power of one switch on ``basis``."""
        if basis == "typical" and self.typical_w is not None:
            return self.typical_w
        return self.switch_w


@dataclass(frozen=True, slots=True, kw_only=True)
class Optics:
    """Optical transceiver: power per module and links per module (2 for twin-port OSFP)."""

    module_w: float = 15.0
    links_per_module: int = 2
    name: str = "800G twin-port OSFP"


@dataclass(frozen=True, slots=True, kw_only=True)
class Media:
    """Medium per hop: node-leaf, leaf-spine, spine-core."""

    host_leaf: Medium = "dac"
    leaf_spine: Medium = "optics"
    spine_core: Medium = "optics"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fabric:
    """Fat tree of radix-k switches, built per plane, optionally in rail-optimized SUs.

    Each leaf has ``leaf_host_ports`` down and ``leaf_uplink_ports`` up. ``nodes_per_su``
    builds the fabric in whole scalable units of that many node slots, one leaf per rail per
    SU (NVIDIA SuperPOD style); ``reserved_node_slots`` are slots a fabric manager (UFM)
    takes. A node's ports are split evenly over ``planes`` and, inside a plane, over ``rails``.
    """

    leaf: SwitchType
    spine: SwitchType
    leaf_host_ports: int
    leaf_uplink_ports: int
    name: str = "fabric"
    model: FabricModel = "fat_tree"
    core: SwitchType | None = None
    planes: int = 1
    rails: int | None = None
    nodes_per_su: int | None = None
    reserved_node_slots: int = 0
    max_tiers: int = 3
    optics: Optics = field(default_factory=Optics)
    dac_w_per_cable: float = 0.1
    media: Media = field(default_factory=Media)

    @property
    def core_switch(self) -> SwitchType:
        """The core tier's switch (the spine model unless ``core`` is set)."""
        return self.core if self.core is not None else self.spine


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """Power and space of the site.

    The IT budget is the smaller of ``it_cap_mw`` and ``facility_cap_mw / pue``, less the
    ``reserve_fraction``. ``rack_power_kw`` and ``rack_units`` size the racks; ``max_racks``
    makes the rack count a constraint.
    """

    it_cap_mw: float | None = None
    facility_cap_mw: float | None = None
    pue: float | None = None
    reserve_fraction: float = 0.0
    rack_power_kw: float | None = None
    rack_units: int | None = None
    max_racks: int | None = None
    power_basis: PowerBasis = "max"
    min_nodes: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A whole plan; checked on construction (raises :class:`PlanError`)."""

    site: Site
    node_types: tuple[NodeType, ...]
    fabric: Fabric
    legacy: bool = False
    """Read from the old tool's JSON config: error paths use its spelling."""

    def __post_init__(self) -> None:
        _check_plan(self)

    def site_field(self, name: str) -> str:
        """The path of a site field as the plan file spells it."""
        return name if self.legacy else f"site.{name}"

    def node_field(self, index: int, name: str) -> str:
        """The path of a node-type field as the plan file spells it."""
        return f"node.{name}" if self.legacy else f"node_types[{index}].{name}"


def _check_number(value: float, path: str, *, minimum: float = 0.0, strict: bool = False) -> None:
    if not math.isfinite(value):
        raise PlanError(f"must be a finite number, not {value}", field=path)
    if value < minimum or (strict and value == minimum):
        bound = ">" if strict else "≥"
        raise PlanError(f"must be {bound} {minimum:g}, got {value:g}", field=path)


def _check_node(plan: Plan, i: int, t: NodeType) -> None:
    f = plan.node_field
    if not t.name:
        raise PlanError("must not be empty", field=f(i, "name"))
    _check_number(t.gpus_per_node, f(i, "gpus_per_node"))
    _check_number(t.nics_per_node, f(i, "nics_per_node"), minimum=1)
    _check_number(t.ports_per_nic_to_fabric, f(i, "ports_per_nic_to_fabric"), minimum=1)
    for name in ("gpu_w", "cpu_w", "dram_w", "nvme_w", "nic_w", "node_aux_w"):
        _check_number(getattr(t, name), f(i, name))
    if t.nameplate_w is not None:
        _check_number(t.nameplate_w, f(i, "nameplate_w"), strict=True)
        listed = ComponentPower(
            gpu_w=t.gpus_per_node * t.gpu_w,
            cpu_w=t.cpu_w,
            dram_w=t.dram_w,
            nvme_w=t.nvme_w,
            nic_w=t.nics_per_node * t.nic_w,
            aux_w=t.node_aux_w,
        ).total_w
        if t.nameplate_w < listed:
            raise PlanError(
                f"nameplate {t.nameplate_w:g} W is below the components' sum {listed:g} W; "
                "the nameplate is the node's maximum",
                field=f(i, "nameplate_w"),
            )
    if t.max_w <= 0:
        raise PlanError("the node's components add up to 0 W", field=f(i, "gpu_w"))
    if t.typical_w is not None:
        _check_number(t.typical_w, f(i, "typical_w"), strict=True)
        if t.typical_w > t.max_w:
            raise PlanError(
                f"typical {t.typical_w:g} W exceeds the maximum {t.max_w:g} W",
                field=f(i, "typical_w"),
            )
    if t.rack_units is not None:
        _check_number(t.rack_units, f(i, "rack_units"), minimum=1)
    _check_number(t.ratio, f(i, "ratio"), minimum=1)


def _check_switch(s: SwitchType, path: str) -> None:
    _check_number(s.ports, f"{path}.ports", minimum=2)
    _check_number(s.switch_w, f"{path}.switch_w")
    _check_number(s.rack_units, f"{path}.rack_units", minimum=1)
    if s.typical_w is not None:
        _check_number(s.typical_w, f"{path}.typical_w")
        if s.typical_w > s.switch_w:
            raise PlanError(
                f"typical {s.typical_w:g} W exceeds the maximum {s.switch_w:g} W",
                field=f"{path}.typical_w",
            )


def _check_fabric(plan: Plan) -> None:
    fab = plan.fabric
    if fab.model not in ("fat_tree", "flat"):
        raise PlanError(f"must be 'fat_tree' or 'flat', got {fab.model!r}", field="fabric.model")
    _check_switch(fab.leaf, "fabric.leaf")
    _check_switch(fab.spine, "fabric.spine")
    if fab.core is not None:
        _check_switch(fab.core, "fabric.core")
    _check_number(fab.leaf_host_ports, "fabric.leaf_host_ports", minimum=1)
    _check_number(fab.leaf_uplink_ports, "fabric.leaf_uplink_ports")
    if fab.leaf_host_ports + fab.leaf_uplink_ports > fab.leaf.ports:
        raise PlanError(
            f"{fab.leaf_host_ports} host + {fab.leaf_uplink_ports} uplink ports exceed the "
            f"leaf's {fab.leaf.ports} ports",
            field="fabric.leaf_uplink_ports",
        )
    if fab.leaf_uplink_ports == 0 and fab.max_tiers > 1:
        raise PlanError(
            "a leaf with no uplinks cannot reach a spine; give uplink ports or max_tiers = 1",
            field="fabric.leaf_uplink_ports",
        )
    _check_number(fab.max_tiers, "fabric.max_tiers", minimum=1)
    if fab.max_tiers > 3:
        raise PlanError(f"must be 1, 2 or 3, got {fab.max_tiers}", field="fabric.max_tiers")
    _check_number(fab.planes, "fabric.planes", minimum=1)
    _check_number(fab.reserved_node_slots, "fabric.reserved_node_slots")
    if fab.nodes_per_su is not None:
        _check_number(fab.nodes_per_su, "fabric.nodes_per_su", minimum=1)
    if fab.rails is not None:
        _check_number(fab.rails, "fabric.rails", minimum=1)
    for t in plan.node_types:
        if t.fabric_ports % fab.planes:
            raise PlanError(
                f"{t.name}'s {t.fabric_ports} fabric ports do not split evenly over "
                f"{fab.planes} planes",
                field="fabric.planes",
            )
        per_plane = t.fabric_ports // fab.planes
        if fab.rails is not None and per_plane % fab.rails:
            raise PlanError(
                f"{t.name} has {per_plane} ports per plane, which do not split evenly over "
                f"{fab.rails} rails",
                field="fabric.rails",
            )
    _check_number(fab.optics.module_w, "fabric.optics.module_w")
    _check_number(fab.optics.links_per_module, "fabric.optics.links_per_module", minimum=1)
    _check_number(fab.dac_w_per_cable, "fabric.dac_w_per_cable")
    for hop in ("host_leaf", "leaf_spine", "spine_core"):
        if getattr(fab.media, hop) not in ("dac", "optics"):
            raise PlanError("must be 'dac' or 'optics'", field=f"fabric.media.{hop}")


def _check_site(plan: Plan) -> None:
    site, f = plan.site, plan.site_field
    if site.it_cap_mw is None and site.facility_cap_mw is None:
        raise PlanError(
            "the plan needs a power cap: set it_cap_mw, or facility_cap_mw with pue",
            field=f("it_cap_mw"),
        )
    if site.it_cap_mw is not None:
        _check_number(site.it_cap_mw, f("it_cap_mw"), strict=True)
    if site.pue is not None:
        _check_number(site.pue, f("pue"), minimum=1.0)
    if site.facility_cap_mw is not None:
        _check_number(site.facility_cap_mw, f("facility_cap_mw"), strict=True)
        if site.pue is None:
            raise PlanError("a facility cap needs the site's pue", field=f("pue"))
    _check_number(site.reserve_fraction, f("reserve_fraction"))
    if site.reserve_fraction >= 1:
        raise PlanError(
            f"must be below 1 (a fraction), got {site.reserve_fraction:g}",
            field=f("reserve_fraction"),
        )
    if site.power_basis not in ("max", "typical"):
        raise PlanError("must be 'max' or 'typical'", field=f("power_basis"))
    _check_number(site.min_nodes, f("min_nodes"), minimum=1)
    if site.rack_power_kw is not None:
        _check_number(site.rack_power_kw, f("rack_power_kw"), strict=True)
        for t in plan.node_types:
            node_w = t.power_w(site.power_basis)
            if node_w > site.rack_power_kw * 1e3:
                raise PlanError(
                    f"{site.rack_power_kw:g} kW per rack is below one {t.name} node "
                    f"({node_w / 1e3:g} kW)",
                    field=f("rack_power_kw"),
                )
    if site.rack_units is not None:
        _check_number(site.rack_units, f("rack_units"), minimum=1)
        for i, t in enumerate(plan.node_types):
            if t.rack_units is None:
                raise PlanError(
                    f"the site has {site.rack_units} U racks; give the node's height in U",
                    field=plan.node_field(i, "rack_units"),
                )
            if t.rack_units > site.rack_units:
                raise PlanError(
                    f"{t.rack_units} U does not fit a {site.rack_units} U rack",
                    field=plan.node_field(i, "rack_units"),
                )
    if site.max_racks is not None:
        _check_number(site.max_racks, f("max_racks"), minimum=1)
        if site.rack_power_kw is None and site.rack_units is None:
            raise PlanError(
                "a rack count limit needs rack_power_kw or rack_units to fill racks",
                field=f("max_racks"),
            )


def _check_plan(plan: Plan) -> None:
    if not plan.node_types:
        raise PlanError("the plan needs at least one node type", field="node_types")
    seen: set[str] = set()
    for i, t in enumerate(plan.node_types):
        if t.name in seen:
            raise PlanError(f"duplicate node type {t.name!r}", field=plan.node_field(i, "name"))
        seen.add(t.name)
        _check_node(plan, i, t)
    _check_fabric(plan)
    _check_site(plan)
