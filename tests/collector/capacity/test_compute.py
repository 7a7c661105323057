"""The live power picture: per-node draw, stale and unmatched nodes, clamping, racks."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.capacity.compute import compute_picture, fleet_solution
from collector.capacity.config import CapacityPlan, parse_capacity
from collector.nodefacts import Staleness
from collector.power.plan import read_plan_document
from shared.errors import PlanError
from shared.schema import Sample
from tests.collector.capacity.helpers import (
    PLAN,
    dgx_rest_w,
    filled_view,
    site_plan,
    true_node_w,
)

NOW = 1_790_000_000.0


def _truth(cplan: CapacityPlan, samples: list[Sample]) -> float:
    rest = dgx_rest_w(cplan)
    return sum(true_node_w(s, rest) for s in samples)


def test_node_draw_is_gpu_interval_power_plus_rapl_plus_modelled_rest() -> None:
    """Nodes' draw equals the simulator's GPU and CPU power plus the type's unreported parts."""
    cplan = site_plan()
    sim = FleetSimulator(40, seed=3)
    view, samples = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    assert p.nodes == 40
    assert p.measured_nodes == 40
    assert p.nodes_w == pytest.approx(_truth(cplan, samples), rel=1e-9)
    assert p.types[0].node_type == "DGX-H100"
    assert p.types[0].nodes == 40
    assert p.it_w == pytest.approx(p.nodes_w + p.fabric_w)
    assert p.fabric_w > 0
    assert p.facility_w == pytest.approx(p.it_w * 1.25)
    assert p.headroom_w == pytest.approx(5e6 - p.it_w)
    assert p.headroom_pct == pytest.approx((5e6 - p.it_w) / 5e6 * 100)


def test_instantaneous_power_is_used_only_without_an_energy_counter() -> None:
    """A GPU without interval power counts its instantaneous reading."""
    cplan = site_plan()
    sim = FleetSimulator(1, seed=3)
    view, samples = filled_view(sim, NOW)
    before = compute_picture(cplan, view.nodes(), NOW).nodes_w
    s = samples[0]
    gpus = [msgspec.structs.replace(g, power_interval_w=None, power_w=123.0) for g in s.gpus]
    view.on_sample(msgspec.structs.replace(s, ts=s.ts + 1, gpus=gpus), NOW)
    after = compute_picture(cplan, view.nodes(), NOW).nodes_w
    assert after == pytest.approx(before - sum(g.power_interval_w or 0 for g in s.gpus) + 8 * 123)


def test_stale_and_offline_nodes_count_at_nameplate_by_default() -> None:
    """A node silent for longer than its intervals, or offline, counts at its nameplate."""
    cplan = site_plan()
    sim = FleetSimulator(10, seed=5)
    view, samples = filled_view(sim, NOW)
    # node 0 falls silent: its sample arrived long ago
    view.get(sim.node_ids[0]).sample_received = NOW - 3600  # type: ignore[union-attr]
    view.on_status(sim.node_ids[1], "offline", NOW)
    p = compute_picture(cplan, view.nodes(), NOW, staleness=Staleness(3))
    assert p.stale_nodes == 2
    assert set(p.stale) == {sim.node_ids[0], sim.node_ids[1]}
    expected = _truth(cplan, samples[2:]) + 2 * 10_200
    assert p.nodes_w == pytest.approx(expected)
    last = compute_picture(cplan, view.nodes(), NOW, stale_basis="last")
    assert last.nodes_w == pytest.approx(_truth(cplan, samples))
    zero = compute_picture(cplan, view.nodes(), NOW, stale_basis="zero")
    assert zero.nodes_w == pytest.approx(_truth(cplan, samples[2:]))


def test_unmatched_node_counts_at_the_fallback_and_is_listed() -> None:
    """A node no rule matches counts at the largest type's nameplate and is named."""
    cplan = site_plan()
    sim = FleetSimulator(5, seed=5, gpus_per_node=4)  # 4 x H100: no type has 4 GPUs
    view, _ = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    assert p.unmatched_nodes == 5
    assert list(p.unmatched) == sim.node_ids
    assert p.fallback_type == "HGX-B200"
    assert p.fallback_w == 14_300
    assert p.nodes_w == pytest.approx(5 * 14_300)
    assert p.measured_nodes == 0


def test_absurd_power_is_clamped_to_nameplate_and_flagged() -> None:
    """GPUs at the schema's limit on one node move the site by at most that node's nameplate."""
    cplan = site_plan()
    sim = FleetSimulator(20, seed=9)
    view, samples = filled_view(sim, NOW)
    honest = compute_picture(cplan, view.nodes(), NOW)
    s = samples[7]
    gpus = [msgspec.structs.replace(g, power_interval_w=5_000.0, power_w=5_000.0) for g in s.gpus]
    bad = msgspec.structs.replace(s, ts=s.ts + 1, gpus=gpus, cpu_power_w=10_000.0)
    # within the wire schema's bounds: it round-trips through the decoder
    bad = msgspec.json.decode(msgspec.json.encode(bad), type=Sample)
    view.on_sample(bad, NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    assert p.clamped_nodes == 1
    assert list(p.clamped) == [sim.node_ids[7]]
    own = true_node_w(s, dgx_rest_w(cplan))
    assert p.nodes_w == pytest.approx(honest.nodes_w - own + 10_200)
    assert p.nodes_w - honest.nodes_w <= 10_200


def test_explicit_assignment_and_gpu_model_rules_pick_the_type() -> None:
    """svc-* nodes are CPU-2S by pattern; a B200 inventory matches HGX-B200 by model."""
    cplan = site_plan()
    sim = FleetSimulator(2, seed=1)
    view, samples = filled_view(sim, NOW)
    inv = sim.inventory(1, NOW)
    b200 = [msgspec.structs.replace(g, name="NVIDIA B200") for g in inv.gpus]
    view.on_inventory(msgspec.structs.replace(inv, gpus=b200), NOW + 1)
    svc = msgspec.structs.replace(samples[0], node="svc-1", gpus=[], cpu_power_w=300.0)
    view.on_sample(svc, NOW)
    view.on_status("svc-1", "online", NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    by_type = {t.node_type: t.nodes for t in p.types}
    assert by_type == {"DGX-H100": 1, "HGX-B200": 1, "CPU-2S": 1}
    assert p.unmatched_nodes == 0
    racks = {r.rack: r for r in p.racks}
    assert racks["service-row"].draw_w == pytest.approx(300 + 300 + 100 + 25 + 200)
    assert racks["service-row"].limit_w == 10_000


def test_rack_over_its_limit_is_the_binding_constraint() -> None:
    """A cabinet above its limit is listed first, flagged over, and binds."""
    doc: dict[str, Any] = dict(read_plan_document(PLAN))
    doc["site"] = {**doc["site"], "rack_power_kw": 50}
    cplan = parse_capacity(doc)
    sim = FleetSimulator(12, seed=2)
    view, _ = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    assert p.racks[0].rack == "x1000"
    assert p.racks[0].over
    assert p.binding == "rack_power"
    assert not p.fits


def test_more_nodes_fit_as_the_solver_says() -> None:
    """The spare count per type is the solver's, with fabric growth, at the live mean."""
    cplan = site_plan()
    sim = FleetSimulator(100, seed=4)
    view, _ = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    dgx = p.types[0]
    counts = {"DGX-H100": 100}
    totals = {"DGX-H100": dgx.draw_w}
    s = fleet_solution(cplan.plan, counts, totals, basis=cplan.plan.site.power_basis)
    assert dgx.more_live == next(x.nodes for x in s.spare_nodes if x.node_type == "DGX-H100")
    assert dgx.more_live > 0
    mean = dgx.draw_w / 100
    n = 100 + dgx.more_live
    fits = fleet_solution(cplan.plan, {"DGX-H100": n}, {"DGX-H100": n * mean}, basis="max")
    over = fleet_solution(
        cplan.plan, {"DGX-H100": n + 1}, {"DGX-H100": (n + 1) * mean}, basis="max"
    )
    assert fits.fits
    assert not over.fits
    assert dgx.next_binding == over.binding[0].constraint
    assert dgx.more_nameplate < dgx.more_live


def test_a_node_in_the_view_only_through_rejects_is_not_counted() -> None:
    """A name seen only on rejected messages is no node of the fleet."""
    cplan = site_plan()
    sim = FleetSimulator(3, seed=4)
    view, _ = filled_view(sim, NOW)
    view.on_reject("forged-node", "invalid", NOW)
    view.on_status("x9999c0s0b0n0", "offline", time.time())
    p = compute_picture(cplan, view.nodes(), NOW)
    assert p.nodes == 4  # the offline node with no inventory counts (unmatched, fallback)
    assert p.unmatched == ("x9999c0s0b0n0",)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"fallback_type": "nope"}, "capacity.fallback_type"),
        ({"fallback_w": -1}, "capacity.fallback_w"),
        ({"match": [{"node_type": "DGX-H100"}]}, "capacity.match[0]"),
        (
            {"match": [{"node_type": "DGX-H100", "gpu_modle": "H100"}]},
            "capacity.match[0].gpu_modle",
        ),
        ({"assign": [{"node_type": "DGX-H100", "nodes": []}]}, "capacity.assign[0].nodes"),
        ({"racks": [{"name": "r", "nodes": ["a*"], "limit_kw": 0}]}, "capacity.racks[0].limit_kw"),
        ({"colour": "red"}, "capacity.colour"),
    ],
)
def test_a_bad_capacity_table_names_the_field(patch: dict[str, Any], field: str) -> None:
    """Each mistake in [capacity] is one PlanError naming its field."""
    doc: dict[str, Any] = dict(read_plan_document(PLAN))
    doc["capacity"] = patch
    with pytest.raises(PlanError) as info:
        parse_capacity(doc)
    assert str(info.value).startswith(field) or info.value.field == field


def test_an_empty_fleet_draws_nothing_and_the_old_tools_config_works() -> None:
    """No nodes: 0 W and the whole cap as headroom; the old tool's JSON plan loads too."""
    p = compute_picture(site_plan(), [], NOW)
    assert p.nodes == 0
    assert p.it_w == 0.0
    assert p.headroom_pct == 100.0
    assert p.fits
    old = parse_capacity(read_plan_document(PLAN.parent / "old_tool_example.json"))
    assert old.fallback_type == "GPU-8x"
    assert compute_picture(old, [], NOW).cap_w == 5e6


def test_node_counts_by_basis_add_up_to_the_nodes_with_a_stale_clamped_node() -> None:
    """measured + stale + unmatched + clamped == nodes, when a stale node's last draw was absurd
    (on stale_basis "last" it was counted both stale and clamped)."""
    cplan = site_plan()
    sim = FleetSimulator(6, seed=9)
    view, samples = filled_view(sim, NOW)
    s = samples[2]
    gpus = [msgspec.structs.replace(g, power_interval_w=5_000.0) for g in s.gpus]
    view.on_sample(msgspec.structs.replace(s, ts=s.ts + 1, gpus=gpus), NOW)
    view.on_sample(msgspec.structs.replace(samples[4], ts=samples[4].ts + 1, gpus=gpus), NOW)
    view.get(sim.node_ids[2]).sample_received = NOW - 3600  # type: ignore[union-attr]
    for basis in ("nameplate", "last", "zero"):
        p = compute_picture(cplan, view.nodes(), NOW, staleness=Staleness(3), stale_basis=basis)
        parts = p.measured_nodes + p.stale_nodes + p.unmatched_nodes + p.clamped_nodes
        assert parts == p.nodes == 6, basis
        assert (p.stale_nodes, p.clamped_nodes, list(p.clamped)) == (1, 1, [sim.node_ids[4]])
