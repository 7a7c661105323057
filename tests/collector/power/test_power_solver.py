"""The solver: old-tool parity, the radix-aware answer, monotonicity, fixed fleets, racks."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from collector.power import (
    Fabric,
    NodeType,
    Plan,
    Site,
    SwitchType,
    compare_with_flat,
    it_budget,
    load_plan,
    mix_counts,
    solve_fixed,
    solve_max,
)
from shared.errors import PlanError

DATA = Path(__file__).parents[2] / "data" / "power"


def _old_tool() -> Plan:
    return load_plan(DATA / "old_tool_example.json")


def _flat(plan: Plan) -> Plan:
    return replace(plan, fabric=replace(plan.fabric, model="flat"))


def _with_site(plan: Plan, **changes: Any) -> Plan:
    return replace(plan, site=replace(plan.site, **changes))


def _old_tool_oracle(cap_w: float) -> tuple[int, float]:
    """The old tool's flat formula written out independently: largest node count and its
    total power."""
    node_w = 8 * 700 + 700 + 400 + 200 + 8 * 75 + 350

    def total(n: int) -> float:
        leaves = math.ceil(n * 8 * 1 / 32)
        uplinks = leaves * 32
        spines = math.ceil(uplinks / 64)
        return n * node_w + leaves * 1200 + spines * 1400 + uplinks * 2 * 6.0

    n = 0
    while total(n + 1) <= cap_w:
        n += 1
    return n, total(n)


def test_old_tool_parity_in_flat_mode() -> None:
    """The old tool's example config: 593 nodes, 4,744 GPUs, 149/4,768/75, 4,996,066 W."""
    solution = solve_max(_flat(_old_tool()))
    assert (solution.nodes, solution.gpus) == (593, 4744)
    fabric = solution.fabric
    assert (fabric.host_links, fabric.leaves, fabric.leaf_spine_links, fabric.spines) == (
        4744,
        149,
        4768,
        75,
    )
    power = solution.power
    assert power.nodes_w == 593 * 7850 == 4_655_050
    assert power.switching_w == 149 * 1200 + 75 * 1400 == 283_800
    assert power.optics_w == 4768 * 2 * 6.0 == 57_216
    assert power.total_it_w == 4_996_066
    assert solution.headroom_w == 3_934
    assert [b.constraint for b in solution.binding] == ["it_power"]
    assert "5,003,916 W" in solution.binding[0].detail  # 594 nodes


@pytest.mark.parametrize("cap_mw", [0.05, 0.5, 1.0, 2.5, 5.0, 7.77, 12.0])
def test_flat_mode_matches_old_tool_formula_at_many_caps(cap_mw: float) -> None:
    """The flat model agrees with an independent transcription of the old tool's formula at
    several caps."""
    nodes, total_w = _old_tool_oracle(cap_mw * 1e6)
    solution = solve_max(_flat(_with_site(_old_tool(), it_cap_mw=cap_mw)))
    assert solution.nodes == nodes
    assert solution.power.total_it_w == pytest.approx(total_w)


def test_fat_tree_answer_on_old_config_needs_a_third_tier() -> None:
    """Past 64 leaves a third tier is needed: 553 nodes (139 leaves, 144 agg, 128 core).

    By hand: 4 full pods of 32 leaves with 32 aggregation switches each, a pod of 11 leaves
    needs 16 (smallest divisor of 32 ≥ 11); 5 pods → 4 cores per group (smallest divisor of
    32 ≥ ceil(5·32/64) = 3) x 32 groups = 128. Power: 553 x 7,850 + 139 x 1,200 +
    272 x 1,400 + 4 x 4,448 x 6 + 4,424 x 0.1 W = 4,995,844.4 W.
    """
    solution = solve_max(_old_tool())
    assert (solution.nodes, solution.gpus) == (553, 4424)
    fabric = solution.fabric
    assert (fabric.tiers, fabric.leaves, fabric.spines, fabric.cores) == (3, 139, 144, 128)
    assert fabric.optics_modules == 4 * 4448
    assert solution.power.total_it_w == pytest.approx(4_995_844.4)
    assert solution.binding[0].constraint == "it_power"


def test_flat_comparison_explains_the_radix_gap() -> None:
    """The default answer says why it differs: 149 leaves cannot reach 64-port spines."""
    plan = _old_tool()
    comparison = compare_with_flat(plan, solve_max(plan))
    assert comparison is not None
    assert (comparison.nodes, comparison.gpus, comparison.leaves, comparison.spines) == (
        593,
        4744,
        149,
        75,
    )
    assert comparison.reasons[0].startswith(
        "149 leaves cannot connect to 64-port spines in two tiers"
    )
    assert "144 aggregation and 128 core switches" in comparison.reasons[1]
    assert compare_with_flat(_flat(plan), solve_max(_flat(plan))) is None


@pytest.mark.parametrize("model", ["fat_tree", "flat"])
def test_more_cap_never_means_fewer_gpus(model: str) -> None:
    """GPUs never fall as the IT cap rises, across the 2→3 tier jump."""
    plan = _old_tool()
    plan = replace(plan, fabric=replace(plan.fabric, model=model))  # type: ignore[arg-type]
    previous = 0
    for step in range(1, 121):
        solution = solve_max(_with_site(plan, it_cap_mw=step * 0.125), require_min_nodes=False)
        assert solution.gpus >= previous
        assert solution.power.total_it_w <= step * 0.125e6
        previous = solution.gpus
    assert previous > 0


def test_superpod_more_cap_never_means_fewer_gpus() -> None:
    """Monotone with scalable units, rails, optics and racks too."""
    plan = load_plan(DATA / "dgx_h100_superpod.toml")
    gpus = [
        solve_max(_with_site(plan, it_cap_mw=mw / 10), require_min_nodes=False).gpus
        for mw in range(1, 80)
    ]
    assert gpus == sorted(gpus)
    assert gpus[-1] > gpus[0]


def test_answer_is_the_largest_fleet_that_fits() -> None:
    """solve_max's fleet fits and one more node does not."""
    plan = load_plan(DATA / "dgx_h100_superpod.toml")
    best = solve_max(plan)
    assert best.fits
    assert solve_fixed(plan, {"DGX-H100": best.nodes}).fits
    assert not solve_fixed(plan, {"DGX-H100": best.nodes + 1}).fits


def test_cap_below_one_node_is_a_plan_error_naming_the_cap() -> None:
    """5 kW cannot hold one 7,850 W node: PlanError on it_cap_mw (old tool's spelling)."""
    with pytest.raises(PlanError, match="below the smallest fleet") as info:
        solve_max(_with_site(_old_tool(), it_cap_mw=0.005))
    assert info.value.field == "it_cap_mw"
    assert "9,051 W" in str(info.value)  # 7,850 W node + 1,200 W leaf + 8 DAC cables
    empty = solve_max(_with_site(_old_tool(), it_cap_mw=0.005), require_min_nodes=False)
    assert (empty.nodes, empty.gpus) == (0, 0)


def test_cap_exactly_one_node_and_its_fabric_fits_one_node() -> None:
    """A cap equal to one node plus its leaf and cables fits exactly that node."""
    solution = solve_max(_with_site(_old_tool(), it_cap_mw=0.0090508))
    assert solution.nodes == 1
    assert solution.headroom_w == pytest.approx(0.0, abs=1e-6)


def test_facility_cap_through_pue_and_reserve() -> None:
    """6.25 MW facility at PUE 1.25 is 5 MW IT; a 10% reserve leaves 4.5 MW."""
    plan = _flat(_with_site(_old_tool(), it_cap_mw=None, facility_cap_mw=6.25, pue=1.25))
    solution = solve_max(plan)
    assert solution.budget.it_budget_w == 5e6
    assert solution.budget.limited_by == "facility_power"
    assert solution.nodes == 593
    assert solution.power.facility_w == pytest.approx(4_996_066 * 1.25)
    assert solution.binding[0].constraint == "facility_power"
    reserved = solve_max(_with_site(plan, reserve_fraction=0.1))
    assert reserved.budget.it_budget_w == pytest.approx(4.5e6)
    assert reserved.nodes == _old_tool_oracle(4.5e6)[0]


def test_it_budget_takes_the_tighter_cap() -> None:
    """Both caps given: the smaller IT-equivalent wins."""
    budget = it_budget(Site(it_cap_mw=4.0, facility_cap_mw=6.25, pue=1.25))
    assert (budget.it_budget_w, budget.limited_by) == (4e6, "it_power")


def test_fixed_fleet_power_and_headroom() -> None:
    """593 old-tool nodes: 4,996,066 W and 3,934 W headroom; 594 is over by 3,916 W."""
    plan = _flat(_old_tool())
    fits = solve_fixed(plan, {"GPU-8x": 593})
    assert fits.fits
    assert (fits.nodes, fits.gpus) == (593, 4744)
    assert fits.power.total_it_w == 4_996_066
    assert fits.headroom_w == 3_934
    assert fits.spare_nodes[0].nodes == 0
    over = solve_fixed(plan, {"GPU-8x": 594})
    assert not over.fits
    assert over.headroom_w == -3_916
    assert [b.constraint for b in over.binding] == ["it_power"]


def test_fixed_fleet_with_measured_node_power() -> None:
    """Measured 6,000 W per node: 5e6 - (593 x 6,000 + 283,800 + 57,216) = 1,100,984 W left."""
    plan = _flat(_old_tool())
    solution = solve_fixed(plan, {"GPU-8x": 593}, node_power_w={"GPU-8x": 6000.0})
    assert solution.power.nodes_w == 593 * 6000
    assert solution.headroom_w == pytest.approx(1_100_984)
    assert solution.fleet[0].components.total_w == pytest.approx(593 * 6000)
    more = solution.spare_nodes[0].nodes
    assert solve_fixed(plan, {"GPU-8x": 593 + more}, node_power_w={"GPU-8x": 6000.0}).fits
    assert not solve_fixed(plan, {"GPU-8x": 594 + more}, node_power_w={"GPU-8x": 6000.0}).fits


@pytest.mark.parametrize(
    ("counts", "node_power_w", "field"),
    [
        ({"H200": 3}, None, "counts['H200']"),
        ({"GPU-8x": -1}, None, "counts['GPU-8x']"),
        ({"GPU-8x": 1}, {"GPU-8x": -5.0}, "node_power_w['GPU-8x']"),
    ],
)
def test_fixed_fleet_rejects_bad_input(
    counts: dict[str, int], node_power_w: dict[str, float] | None, field: str
) -> None:
    """Unknown types, negative counts and negative measured power name the culprit."""
    with pytest.raises(PlanError) as info:
        solve_fixed(_old_tool(), counts, node_power_w=node_power_w)
    assert info.value.field == field


def test_rack_power_binds_and_max_racks_limit_the_fleet() -> None:
    """40.8 kW racks hold 4 DGX (space allows 6); 40 racks stop the fleet at 148 nodes.

    148 nodes: 37 node racks; 37 leaves + 32 spines = 69 switches, 118,680 W → 3 network
    racks (power-bound), 40 in all. 149 nodes need 38 + 3 = 41.
    """
    switch = SwitchType(ports=64, switch_w=1720.0)
    plan = Plan(
        site=Site(it_cap_mw=3.0, rack_power_kw=40.8, rack_units=48, max_racks=40),
        node_types=(
            NodeType(
                name="DGX-H100",
                gpus_per_node=8,
                gpu_w=700.0,
                nics_per_node=8,
                nameplate_w=10200.0,
                rack_units=8,
            ),
        ),
        fabric=Fabric(leaf=switch, spine=switch, leaf_host_ports=32, leaf_uplink_ports=32),
    )
    solution = solve_max(plan)
    assert solution.nodes == 148
    racks = solution.racks
    assert racks is not None
    assert (racks.node_racks, racks.network_racks, racks.racks) == (37, 3, 40)
    assert racks.rack_power_binds
    fill = racks.fills[0]
    assert (fill.nodes_per_rack, fill.by_power, fill.by_space, fill.limited_by) == (
        4,
        4,
        6,
        "power",
    )
    assert solution.binding[0].constraint == "rack_power"
    assert "41 racks needed" in solution.binding[0].detail
    # 80 kW racks: 6 per rack by space. 228 nodes = 38 racks + 2 network racks (57 leaves +
    # 32 spines = 89 U); 229 nodes need 39 + 2.
    dense = solve_max(_with_site(plan, rack_power_kw=80.0))
    assert dense.racks is not None
    assert dense.racks.fills[0].limited_by == "space"
    assert not dense.racks.rack_power_binds
    assert (dense.nodes, dense.racks.node_racks, dense.racks.network_racks) == (228, 38, 2)
    assert dense.binding[0].constraint == "rack_space"


def test_fabric_radix_binds_when_tiers_are_capped() -> None:
    """max_tiers = 2 with 8-port switches: 8 leaves x 4 hosts = 32 single-port nodes."""
    switch = SwitchType(ports=8, switch_w=100.0)
    plan = Plan(
        site=Site(it_cap_mw=10.0),
        node_types=(NodeType(name="n", gpus_per_node=4, gpu_w=500.0, nics_per_node=1),),
        fabric=Fabric(
            leaf=switch, spine=switch, leaf_host_ports=4, leaf_uplink_ports=4, max_tiers=2
        ),
    )
    solution = solve_max(plan)
    assert (solution.nodes, solution.gpus, solution.fabric.leaves) == (32, 128, 8)
    assert solution.binding[0].constraint == "fabric_radix"
    three = solve_max(replace(plan, fabric=replace(plan.fabric, max_tiers=3)))
    assert three.nodes == 128  # k³/4
    assert three.binding[0].constraint == "fabric_radix"


def test_tier_jump_is_noted() -> None:
    """A cap that ends right at the two-tier limit says what the next node would cost."""
    plan = _old_tool()
    # 256 nodes = 64 leaves, the two-tier limit; give just enough for them.
    at_limit = solve_fixed(plan, {"GPU-8x": 256})
    capped = _with_site(plan, it_cap_mw=at_limit.power.total_it_w / 1e6 + 1e-9)
    solution = solve_max(capped)
    assert (solution.nodes, solution.fabric.tiers) == (256, 2)
    assert any("one more node would need a 3-tier fabric" in n for n in solution.notes)


def test_mixed_node_types_follow_their_ratio() -> None:
    """Ratios 3:1 fill 3 of the first type per one of the second, counts only growing."""
    big = NodeType(name="B200x8", gpus_per_node=8, gpu_w=1000.0, nics_per_node=8, cpu_w=1000.0)
    small = NodeType(name="L40Sx4", gpus_per_node=4, gpu_w=350.0, nics_per_node=2, ratio=1)
    switch = SwitchType(ports=64, switch_w=1500.0)
    plan = Plan(
        site=Site(it_cap_mw=2.0),
        node_types=(replace(big, ratio=3), small),
        fabric=Fabric(leaf=switch, spine=switch, leaf_host_ports=32, leaf_uplink_ports=32),
    )
    assert mix_counts(plan, 4) == (3, 1)
    assert mix_counts(plan, 5) == (4, 1)
    assert mix_counts(plan, 8) == (6, 2)
    previous: tuple[int, ...] = (0, 0)
    for n in range(60):
        counts = mix_counts(plan, n)
        assert sum(counts) == n
        assert all(c >= p for c, p in zip(counts, previous, strict=True))
        previous = counts
    # By hand: 195 x 9,000 + 65 x 1,400 W nodes; 195 x 8 + 65 x 2 = 1,690 host ports → 53
    # leaves, 32 spines (85 x 1,500 W); optics 53 x 16 + 32 x 27 = 1,712 x 15 W; 1,690 DAC
    # x 0.1 W. Total 1,999,349 W; the next node (a B200x8) brings it to 2,010,090 W.
    solution = solve_max(plan)
    by_type = {g.node_type: g.nodes for g in solution.fleet}
    assert by_type == {"B200x8": 195, "L40Sx4": 65}
    assert solution.gpus == 195 * 8 + 65 * 4
    assert (solution.fabric.leaves, solution.fabric.spines) == (53, 32)
    assert solution.power.total_it_w == pytest.approx(1_999_349)
    assert "2,010,090 W" in solution.binding[0].detail


def test_typical_basis_fits_more_nodes() -> None:
    """Sizing on 8,400 W typical instead of 10,200 W nameplate fits more DGX nodes."""
    plan = load_plan(DATA / "dgx_h100_superpod.toml")
    typical_type = replace(plan.node_types[0], typical_w=8400.0)
    typical = _with_site(replace(plan, node_types=(typical_type,)), power_basis="typical")
    at_max = solve_max(plan)
    at_typical = solve_max(typical)
    assert at_typical.fleet[0].node_w == 8400.0
    assert at_typical.nodes > at_max.nodes
    assert solve_max(_with_site(plan, power_basis="typical")).notes[0] == (
        "DGX-H100 has no typical_w; sized on its maximum 10,200 W"
    )


def test_gpus_per_mw_and_component_breakdown() -> None:
    """GPUs per MW of IT drawn, and the node power split by component."""
    solution = solve_max(_flat(_old_tool()))
    assert solution.gpus_per_it_mw == pytest.approx(4744 / 4.996066)
    parts = solution.power.components
    assert parts.gpu_w == 593 * 8 * 700
    assert parts.nic_w == 593 * 8 * 75
    assert parts.total_w == solution.power.nodes_w
