"""Fabric math: fat-tree limits, NVIDIA's spine rule, the DGX H100 SuperPOD table, optics."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.power import (
    Fabric,
    Media,
    Optics,
    SwitchType,
    build_fabric,
    fat_tree_max_hosts,
    load_plan,
    solve_fixed,
    spine_count,
)

DATA = Path(__file__).parents[2] / "data" / "power"


def _nonblocking(radix: int, *, planes: int = 1, max_tiers: int = 3) -> Fabric:
    """A fat tree of one switch model, half the leaf ports down and half up."""
    switch = SwitchType(ports=radix, switch_w=1000.0)
    return Fabric(
        leaf=switch,
        spine=switch,
        leaf_host_ports=radix // 2,
        leaf_uplink_ports=radix // 2,
        planes=planes,
        max_tiers=max_tiers,
    )


def test_fat_tree_max_hosts_formula_matches_al_fares() -> None:
    """k²/2 hosts in two tiers and k³/4 in three (Al-Fares et al. 2008)."""
    assert fat_tree_max_hosts(4, 2) == 8
    assert fat_tree_max_hosts(4, 3) == 16
    assert fat_tree_max_hosts(64, 2) == 2048
    assert fat_tree_max_hosts(64, 3) == 65536
    with pytest.raises(ValueError, match="tiers"):
        fat_tree_max_hosts(64, 4)


@pytest.mark.parametrize("radix", [4, 8, 16, 32, 64])
def test_two_tiers_hold_exactly_k_squared_over_two_hosts(radix: int) -> None:
    """At k²/2 single-port hosts two tiers suffice (k leaves, k/2 spines); one more needs three."""
    fabric = _nonblocking(radix)
    at_limit = build_fabric(fabric, [(fat_tree_max_hosts(radix, 2), 1)])
    assert (at_limit.tiers, at_limit.leaves, at_limit.spines) == (2, radix, radix // 2)
    over = build_fabric(fabric, [(fat_tree_max_hosts(radix, 2) + 1, 1)])
    assert over.feasible
    assert over.tiers == 3
    assert over.leaves == radix + 1


@pytest.mark.parametrize("radix", [4, 8, 16, 32, 64])
def test_three_tiers_hold_exactly_k_cubed_over_four_hosts(radix: int) -> None:
    """At k³/4 hosts: k²/2 edge, k²/2 aggregation and (k/2)² core switches; one more fails."""
    fabric = _nonblocking(radix)
    full = build_fabric(fabric, [(fat_tree_max_hosts(radix, 3), 1)])
    assert full.feasible
    assert full.tiers == 3
    assert (full.leaves, full.spines, full.cores) == (
        radix * radix // 2,
        radix * radix // 2,
        (radix // 2) ** 2,
    )
    over = build_fabric(fabric, [(fat_tree_max_hosts(radix, 3) + 1, 1)])
    assert not over.feasible
    assert over.tiers == 0
    assert over.reason is not None
    assert f"exceed the {radix * radix // 2}" in over.reason


def test_max_tiers_two_stops_at_spine_radix() -> None:
    """With max_tiers = 2 the (k+1)-th leaf cannot be connected."""
    fabric = _nonblocking(8, max_tiers=2)
    assert build_fabric(fabric, [(32, 1)]).feasible
    over = build_fabric(fabric, [(33, 1)])
    assert not over.feasible
    assert (
        over.reason == "9 leaves per plane exceed the 8 that two tiers of 8-port spines can connect"
    )


def test_single_leaf_needs_no_spine() -> None:
    """Hosts that fit on one leaf make a one-tier fabric without spines or uplinks."""
    layout = build_fabric(_nonblocking(64), [(4, 8)])
    assert (layout.tiers, layout.leaves, layout.spines, layout.leaf_spine_links) == (1, 1, 0, 0)


@pytest.mark.parametrize(
    ("leaves", "expected"),
    [(8, 4), (16, 8), (24, 16), (32, 16), (12, 8), (64, 32), (1, 1), (0, 0)],
)
def test_spine_count_is_smallest_even_divisor(leaves: int, expected: int) -> None:
    """Smallest s ≥ ceil(L·32/64) dividing 32: 24 leaves need 16 spines, not 12."""
    assert spine_count(leaves, 32, 64) == expected


def test_spine_count_none_when_leaves_exceed_spine_ports() -> None:
    """149 leaves cannot all reach a 64-port spine."""
    assert spine_count(149, 32, 64) is None
    assert spine_count(65, 32, 64) is None


@pytest.mark.parametrize(
    ("sus", "nodes", "gpus", "leaves", "spines"),
    [(1, 31, 248, 8, 4), (2, 63, 504, 16, 8), (3, 95, 760, 24, 16), (4, 127, 1016, 32, 16)],
)
def test_dgx_h100_superpod_table(sus: int, nodes: int, gpus: int, leaves: int, spines: int) -> None:
    """NVIDIA's DGX SuperPOD reference architecture (DGX H100), compute fabric table: N SUs
    hold 32N-1 DGX nodes (the UFM takes a slot) with these leaves and spines."""
    plan = load_plan(DATA / "dgx_h100_superpod.toml")
    solution = solve_fixed(plan, {"DGX-H100": nodes})
    fabric = solution.fabric
    assert solution.gpus == gpus
    assert fabric.scalable_units == sus
    assert fabric.rails == 8
    assert (fabric.tiers, fabric.leaves, fabric.spines, fabric.cores) == (2, leaves, spines, 0)


def test_superpod_32nd_node_opens_a_second_su() -> None:
    """With the UFM in one slot, 32 DGX nodes need 2 SUs: 16 leaves."""
    plan = load_plan(DATA / "dgx_h100_superpod.toml")
    fabric = solve_fixed(plan, {"DGX-H100": 32}).fabric
    assert (fabric.scalable_units, fabric.leaves, fabric.spines) == (2, 16, 8)


def test_superpod_one_su_optics_counted_per_twin_port_module() -> None:
    """1 SU, all optics, 2 links per module.

    Nodes: 31 x 4 modules = 124; leaves (host side): 8 x ceil(31/2) = 128;
    leaves (uplinks): 8 x 16 = 128; spines: 4 spines x 64 links / 2 = 128. Total 508 x 15 W.
    """
    plan = load_plan(DATA / "dgx_h100_superpod.toml")
    fabric = solve_fixed(plan, {"DGX-H100": 31}).fabric
    assert fabric.optics_modules == 124 + 128 + 128 + 128
    assert fabric.optics_w == pytest.approx(508 * 15.0)
    assert fabric.dac_cables == 0
    assert fabric.leaf_switches_w == pytest.approx(8 * 1720.0)
    assert fabric.spine_switches_w == pytest.approx(4 * 1720.0)


def test_dac_host_links_and_typical_switch_power() -> None:
    """DAC host links cost dac_w each; the typical basis uses each switch's typical figure."""
    switch = SwitchType(ports=64, switch_w=1720.0, typical_w=750.0)
    fabric = Fabric(
        leaf=switch,
        spine=switch,
        leaf_host_ports=32,
        leaf_uplink_ports=32,
        dac_w_per_cable=0.1,
        optics=Optics(module_w=15.0, links_per_module=2),
        media=Media(host_leaf="dac", leaf_spine="dac", spine_core="dac"),
    )
    layout = build_fabric(fabric, [(16, 8)], basis="typical")  # 128 host links, 4 leaves
    assert (layout.leaves, layout.spines) == (4, 2)
    assert layout.dac_cables == 128 + 4 * 32
    assert layout.dac_w == pytest.approx(25.6)
    assert layout.optics_modules == 0
    assert layout.switching_w == pytest.approx(6 * 750.0)


def test_planes_are_separate_trees() -> None:
    """8 ports over 2 planes: each plane carries 4 ports per node and has its own spines."""
    one = build_fabric(_nonblocking(64), [(64, 8)])
    two = build_fabric(_nonblocking(64, planes=2), [(64, 8)])
    assert (one.leaves, one.spines) == (16, 8)
    assert (two.leaves, two.spines) == (16, 8)  # 2 planes x (8 leaves, 4 spines)
    assert two.host_links == one.host_links == 512
    big = build_fabric(_nonblocking(64, planes=2), [(512, 8)])
    assert big.tiers == 2  # 64 leaves per plane still fit two tiers
    assert (big.leaves, big.spines) == (128, 64)
    assert build_fabric(_nonblocking(64), [(512, 8)]).tiers == 3


def test_oversubscribed_leaf_holds_more_hosts_in_two_tiers() -> None:
    """48 down / 16 up on 64 ports: 64 leaves x 48 = 3072 host ports in two tiers."""
    switch = SwitchType(ports=64, switch_w=1000.0)
    fabric = Fabric(leaf=switch, spine=switch, leaf_host_ports=48, leaf_uplink_ports=16)
    at_limit = build_fabric(fabric, [(3072, 1)])
    assert (at_limit.tiers, at_limit.leaves, at_limit.spines) == (2, 64, 16)
    assert build_fabric(fabric, [(3073, 1)]).tiers == 3


def test_flat_model_reproduces_old_tool_formulas() -> None:
    """ceil(H/32) leaves, 32 uplinks each, ceil(uplinks/64) spines, 2 x 6 W per uplink."""
    plan = load_plan(DATA / "old_tool_example.json")
    flat = Fabric(
        leaf=plan.fabric.leaf,
        spine=plan.fabric.spine,
        leaf_host_ports=32,
        leaf_uplink_ports=32,
        model="flat",
        optics=plan.fabric.optics,
    )
    layout = build_fabric(flat, [(593, 8)])
    assert (layout.leaves, layout.leaf_spine_links, layout.spines) == (149, 4768, 75)
    assert layout.optics_w == 57216.0
    assert layout.switching_w == 149 * 1200.0 + 75 * 1400.0
