"""Sweeps: parsing PARAM=START:STOP:STEP and how the answer moves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from collector.power import load_plan, parse_sweep, solve_max, sweep, with_param
from shared.errors import PlanError

DATA = Path(__file__).parents[2] / "data" / "power"


def test_parse_sweep_includes_stop_and_does_not_drift() -> None:
    """1:50:1 is 50 points; 0.1 steps land on round values; 600:1000:50 is 9 points."""
    cap = parse_sweep("it_cap_mw=1:50:1")
    assert (cap.param, len(cap.values), cap.values[0], cap.values[-1]) == ("it_cap_mw", 50, 1, 50)
    assert parse_sweep("pue=1.1:1.5:0.1").values == (1.1, 1.2, 1.3, 1.4, 1.5)
    assert parse_sweep("node.gpu_w=600:1000:50").values == tuple(range(600, 1001, 50))
    assert parse_sweep("x=1:1.5:1").values == (1.0,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("it_cap_mw", "expected PARAM=START:STOP:STEP"),
        ("=1:2:1", "expected PARAM=START:STOP:STEP"),
        ("it_cap_mw=1:2", "expected PARAM=START:STOP:STEP"),
        ("it_cap_mw=a:2:1", "must be numbers"),
        ("it_cap_mw=1:2:0", "STEP must be > 0"),
        ("it_cap_mw=5:2:1", "STOP ≥ START"),
        ("it_cap_mw=1:inf:1", "must be finite"),
        ("it_cap_mw=0:1e6:1", "1,000,001 points is more than 10,000"),
        # Counted, not listed: 10^18 values would take the machine's memory before the check.
        ("it_cap_mw=1:1e9:1e-9", "999,999,999,000,000,001 points is more than 10,000"),
        # Too many to count in a float: a subnormal step, a span past the largest float.
        ("it_cap_mw=1:1e9:1e-320", "is more than 10,000 points"),
        ("it_cap_mw=-1e308:1e308:1", "is more than 10,000 points"),
    ],
)
def test_parse_sweep_rejects_malformed_specs(text: str, message: str) -> None:
    """Every malformed spec is a PlanError on --sweep."""
    with pytest.raises(PlanError, match=message) as info:
        parse_sweep(text)
    assert info.value.field == "--sweep"


def test_cap_sweep_matches_single_solves_and_never_falls() -> None:
    """Each sweep point is the solve at that value; GPUs rise with the cap."""
    plan = load_plan(DATA / "old_tool_example.json")
    values = parse_sweep("it_cap_mw=1:10:1").values
    points = sweep(plan, "it_cap_mw", values)
    assert [p.value for p in points] == list(values)
    for p in points:
        single = solve_max(with_param(plan, "it_cap_mw", p.value))
        assert (p.nodes, p.gpus, p.tiers, p.leaves, p.spines, p.cores) == (
            single.nodes,
            single.gpus,
            single.fabric.tiers,
            single.fabric.leaves,
            single.fabric.spines,
            single.fabric.cores,
        )
    gpus = [p.gpus for p in points]
    assert gpus == sorted(gpus)
    assert points[4].nodes == 553  # 5 MW: the fat-tree answer on the old config
    assert [p.tiers for p in points[:3]] == [2, 2, 3]  # 256 nodes fill two tiers


def test_gpu_power_sweep_falls_as_gpus_draw_more() -> None:
    """node.gpu_w 600→1000 W: fewer nodes fit at each step; flat at 700 W is the old 593."""
    plan = load_plan(DATA / "old_tool_example.json")
    flat = replace(plan, fabric=replace(plan.fabric, model="flat"))
    points = sweep(flat, "node.gpu_w", parse_sweep("node.gpu_w=600:1000:50").values)
    nodes = [p.nodes for p in points]
    assert nodes == sorted(nodes, reverse=True)
    assert len(set(nodes)) == len(nodes)
    assert points[2].value == 700
    assert points[2].nodes == 593
    assert all(p.binding == "it_power" for p in points)


def test_points_below_min_nodes_are_marked_not_raised() -> None:
    """A cap too small for one node gives a point with 0 GPUs, feasible false."""
    plan = load_plan(DATA / "old_tool_example.json")
    points = sweep(plan, "it_cap_mw", [0.001, 0.01])
    assert [(p.nodes, p.feasible) for p in points] == [(0, False), (1, True)]
    assert points[0].binding == "it_power"


def test_sweep_value_that_breaks_the_plan_raises() -> None:
    """Sweeping leaf ports below host + uplink ports is a plan error, not a row."""
    plan = load_plan(DATA / "old_tool_example.json")
    with pytest.raises(PlanError, match="exceed the leaf's 60 ports"):
        sweep(plan, "fabric.leaf.ports", [64, 60])
