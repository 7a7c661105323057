"""Fabric math: how many switches, links and transceivers a fleet needs, and their power.

Two models:

``fat_tree`` (default)
    Each plane is its own fat tree of radix-k switches. Leaves come per rail (and per
    scalable unit when ``nodes_per_su`` is set). Two tiers while every leaf can reach every
    spine (at most ``spine.ports`` leaves per plane: k²/2 hosts when non-blocking); past
    that a third tier of pods (``spine.ports / 2`` leaves each, aggregation switches split
    half down, half up) under a core (at most ``core.ports`` pods: k³/4 hosts). Spine counts
    follow NVIDIA's rule: the smallest count that is at least ``ceil(L·u/k)`` and divides
    each leaf's ``u`` uplinks evenly. Cables are DAC or optics per hop; optics are counted
    per module, a twin-port module serving two links at one end.
``flat``
    The old sizing tool, kept bit for bit: ``leaves = ceil(H / host_ports)``,
    ``uplinks = leaves · uplink_ports``, ``spines = ceil(uplinks / spine.ports)``,
    ``optics = uplinks · 2 · watts per link end``; no radix check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from collector.power.model import Fabric, FabricModel, PowerBasis

__all__ = [
    "FabricLayout",
    "FleetPorts",
    "build_fabric",
    "fat_tree_max_hosts",
    "pod_leaves",
    "resolve_rails",
    "spine_count",
]

FleetPorts = Sequence[tuple[int, int]]
"""``(node count, fabric ports per node)`` for each node type."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FabricLayout:
    """The fabric built for one fleet. Counts are totals over all planes."""

    model: FabricModel
    feasible: bool
    tiers: int
    """1: a single leaf per plane; 2: leaf-spine; 3: leaf-aggregation-core; 0: none fits."""
    planes: int
    rails: int
    scalable_units: int | None
    host_links: int
    leaves: int
    spines: int
    """Spine switches (two tiers) or aggregation switches (three tiers)."""
    cores: int
    leaf_spine_links: int
    """Leaf uplinks: the old tool's ``uplinks``."""
    spine_core_links: int
    optics_modules: int
    dac_cables: int
    leaf_switches_w: float
    spine_switches_w: float
    core_switches_w: float
    optics_w: float
    dac_w: float
    two_tier_max_leaves: int
    """Most leaves per plane that two tiers can connect."""
    three_tier_max_leaves: int
    """Most leaves per plane that three tiers can connect."""
    reason: str | None = None
    """Why the fleet does not fit the fabric (``feasible`` is false)."""

    @property
    def switches(self) -> int:
        """All switches, every tier and plane."""
        return self.leaves + self.spines + self.cores

    @property
    def switching_w(self) -> float:
        """Power of all switches."""
        return self.leaf_switches_w + self.spine_switches_w + self.core_switches_w

    @property
    def cabling_w(self) -> float:
        """Power of optics and DAC cables."""
        return self.optics_w + self.dac_w

    @property
    def total_w(self) -> float:
        """Power of the whole fabric."""
        return self.switching_w + self.cabling_w


def fat_tree_max_hosts(radix: int, tiers: int) -> int:
    """Hosts a non-blocking fat tree of ``radix``-port switches reaches: k²/2 or k³/4."""
    if tiers == 2:
        return radix * radix // 2
    if tiers == 3:
        return radix**3 // 4
    raise ValueError(f"fat_tree_max_hosts: tiers must be 2 or 3, got {tiers}")


def spine_count(leaves: int, uplinks_per_leaf: int, spine_ports: int) -> int | None:
    """Smallest spine count ≥ ceil(L·u/k) that divides the ``u`` uplinks of each leaf.

    ``None`` when the leaves cannot all reach every spine (more leaves than spine ports).
    """
    if leaves <= 0 or uplinks_per_leaf <= 0:
        return 0
    need = max(1, math.ceil(leaves * uplinks_per_leaf / spine_ports))
    for s in range(need, uplinks_per_leaf + 1):
        if uplinks_per_leaf % s == 0:
            return s
    return None


def pod_leaves(fabric: Fabric, leaves_per_su: int | None) -> int:
    """Leaves per pod of a three-tier tree: half the spine radix, in whole SUs if possible."""
    pod = fabric.spine.ports // 2
    if leaves_per_su is not None and 0 < leaves_per_su <= pod:
        pod -= pod % leaves_per_su
    return pod


def resolve_rails(fabric: Fabric, ports_per_node: Sequence[int]) -> int:
    """Rails per plane: as set, else one per port in SUs (their gcd), else a single rail."""
    if fabric.rails is not None:
        return fabric.rails
    if fabric.nodes_per_su is None:
        return 1
    per_plane = [p // fabric.planes for p in ports_per_node]
    return math.gcd(*per_plane) if per_plane else 1


@dataclass(frozen=True, slots=True)
class _Tree:
    tiers: int
    spines: int
    cores: int
    spine_groups: tuple[tuple[int, int], ...]
    """(switches, leaf-facing links of each); upward links are as many in three tiers."""
    core_groups: tuple[tuple[int, int], ...]
    reason: str | None = None


def _smallest_divisor_at_least(n: int, at_least: int) -> int | None:
    for d in range(max(1, at_least), n + 1):
        if n % d == 0:
            return d
    return None


def _tree(leaves: int, fabric: Fabric, leaves_per_su: int | None) -> _Tree:
    """The tiers above ``leaves`` leaves of one plane."""
    u = fabric.leaf_uplink_ports
    k_spine, k_core = fabric.spine.ports, fabric.core_switch.ports
    if leaves <= 1:
        return _Tree(leaves, 0, 0, (), ())
    if fabric.max_tiers >= 2 and leaves <= k_spine:
        s = spine_count(leaves, u, k_spine)
        assert s is not None  # leaves <= k_spine guarantees a divisor of u
        return _Tree(2, s, 0, ((s, leaves * u // s),), ())
    pod = pod_leaves(fabric, leaves_per_su)
    if fabric.max_tiers < 3 or leaves > pod * k_core:
        limit = {1: 1, 2: k_spine}.get(fabric.max_tiers, pod * k_core)
        tiers_word = {1: "one tier", 2: "two tiers"}.get(fabric.max_tiers, "three tiers")
        return _Tree(
            0,
            0,
            0,
            (),
            (),
            f"{leaves} leaves per plane exceed the {limit} that {tiers_word} of "
            f"{k_spine}-port spines"
            + (f" and {k_core}-port cores" if fabric.max_tiers >= 3 else "")
            + " can connect",
        )
    full, rem = divmod(leaves, pod)
    agg_full = spine_count(pod, u, k_spine // 2)
    assert agg_full  # pod <= k_spine // 2, so a divisor of u exists (and u > 0)
    groups = [(full * agg_full, pod * u // agg_full)] if full else []
    if rem:
        agg_rem = spine_count(rem, u, k_spine // 2)
        assert agg_rem
        groups.append((agg_rem, rem * u // agg_rem))
    pods = full + (1 if rem else 0)
    up_per_agg = pod * u // agg_full
    per_group = _smallest_divisor_at_least(up_per_agg, math.ceil(pods * up_per_agg / k_core))
    assert per_group is not None  # pods <= k_core
    cores = agg_full * per_group
    q, r = divmod(leaves * u, cores)
    core_groups = tuple(g for g in ((r, q + 1), (cores - r, q)) if g[0])
    return _Tree(3, sum(n for n, _ in groups), cores, tuple(groups), core_groups)


def _modules(groups: Sequence[tuple[int, int]], links_per_module: int) -> int:
    return sum(n * math.ceil(links / links_per_module) for n, links in groups)


def _filled(links: int, capacity: int) -> list[tuple[int, int]]:
    """Leaves filled in order: (count, links each)."""
    if capacity <= 0:
        return []
    full, rem = divmod(links, capacity)
    return [(full, capacity), (1 if rem else 0, rem)]


def _flat(fabric: Fabric, fleet: FleetPorts, basis: PowerBasis) -> FabricLayout:
    host_links = sum(n * p for n, p in fleet)
    leaves = math.ceil(host_links / fabric.leaf_host_ports)
    uplinks = leaves * fabric.leaf_uplink_ports
    spines = math.ceil(uplinks / fabric.spine.ports)
    link_ends = uplinks * 2
    per_end_w = fabric.optics.module_w / fabric.optics.links_per_module
    return FabricLayout(
        model="flat",
        feasible=True,
        tiers=2 if spines else (1 if leaves else 0),
        planes=1,
        rails=1,
        scalable_units=None,
        host_links=host_links,
        leaves=leaves,
        spines=spines,
        cores=0,
        leaf_spine_links=uplinks,
        spine_core_links=0,
        optics_modules=math.ceil(link_ends / fabric.optics.links_per_module),
        dac_cables=0,
        leaf_switches_w=leaves * fabric.leaf.power_w(basis),
        spine_switches_w=spines * fabric.spine.power_w(basis),
        core_switches_w=0.0,
        optics_w=link_ends * per_end_w,
        dac_w=0.0,
        two_tier_max_leaves=fabric.spine.ports,
        three_tier_max_leaves=pod_leaves(fabric, None) * fabric.core_switch.ports,
    )


def build_fabric(fabric: Fabric, fleet: FleetPorts, *, basis: PowerBasis = "max") -> FabricLayout:
    """The fabric for ``fleet`` (``(nodes, ports per node)`` per node type) and its power."""
    if fabric.model == "flat":
        return _flat(fabric, fleet, basis)
    planes = fabric.planes
    rails = resolve_rails(fabric, [p for _, p in fleet])
    per_rail = [p // planes // rails for _, p in fleet]
    slot_ports = max(per_rail, default=0)
    nodes = sum(n for n, _ in fleet)
    host_links = sum(n * p for n, p in fleet)
    rail_links = sum(n * r for (n, _), r in zip(fleet, per_rail, strict=True))
    d = fabric.leaf_host_ports
    slots = nodes + fabric.reserved_node_slots if nodes else 0
    sus: int | None = None
    leaves_per_su: int | None = None
    if fabric.nodes_per_su is not None:
        per_rail_su = math.ceil(fabric.nodes_per_su * slot_ports / d)
        leaves_per_su = rails * per_rail_su
        sus = math.ceil(slots / fabric.nodes_per_su)
        leaves = sus * leaves_per_su
        leaf_capacity = math.ceil(fabric.nodes_per_su * slot_ports / per_rail_su)
    else:
        leaves = rails * math.ceil((rail_links + slot_ports * (slots - nodes)) / d)
        leaf_capacity = d
    tree = _tree(leaves, fabric, leaves_per_su)
    lpm = fabric.optics.links_per_module
    media = fabric.media
    optics_modules = 0
    dac_cables = 0
    if media.host_leaf == "optics":
        optics_modules += sum(n * math.ceil(p / lpm) for n, p in fleet)
        optics_modules += planes * rails * _modules(_filled(rail_links, leaf_capacity), lpm)
    else:
        dac_cables += host_links
    u = fabric.leaf_uplink_ports
    leaf_spine_links = planes * leaves * u if tree.tiers >= 2 else 0
    spine_core_links = planes * leaves * u if tree.tiers == 3 else 0
    if media.leaf_spine == "optics":
        if tree.tiers >= 2:
            optics_modules += planes * leaves * math.ceil(u / lpm)
            optics_modules += planes * _modules(tree.spine_groups, lpm)
    else:
        dac_cables += leaf_spine_links
    if media.spine_core == "optics":
        if tree.tiers == 3:
            optics_modules += planes * (
                _modules(tree.spine_groups, lpm) + _modules(tree.core_groups, lpm)
            )
    else:
        dac_cables += spine_core_links
    pod = pod_leaves(fabric, leaves_per_su)
    return FabricLayout(
        model="fat_tree",
        feasible=tree.reason is None,
        tiers=tree.tiers,
        planes=planes,
        rails=rails,
        scalable_units=sus,
        host_links=host_links,
        leaves=planes * leaves,
        spines=planes * tree.spines,
        cores=planes * tree.cores,
        leaf_spine_links=leaf_spine_links,
        spine_core_links=spine_core_links,
        optics_modules=optics_modules,
        dac_cables=dac_cables,
        leaf_switches_w=planes * leaves * fabric.leaf.power_w(basis),
        spine_switches_w=planes * tree.spines * fabric.spine.power_w(basis),
        core_switches_w=planes * tree.cores * fabric.core_switch.power_w(basis),
        optics_w=optics_modules * fabric.optics.module_w,
        dac_w=dac_cables * fabric.dac_w_per_cable,
        two_tier_max_leaves=fabric.spine.ports if fabric.max_tiers >= 2 else 1,
        three_tier_max_leaves=pod * fabric.core_switch.ports if fabric.max_tiers >= 3 else 0,
        reason=tree.reason,
    )
