"""Measurements first: a node's input power when fresh, else GPUs + CPU + the unreported
parts calibrated per type from the nodes that report both, else the model."""

from __future__ import annotations

import statistics

import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.capacity.calibrate import MIN_NODES
from collector.capacity.compute import compute_picture
from collector.capacity.metrics import capacity_families
from collector.nodefacts import PowerReading, Staleness
from shared.schema import Sample
from tests.collector.capacity.helpers import dgx_rest_w, filled_view, site_plan

NOW = 1_790_000_000.0


def _sensors_w(s: Sample) -> float:
    return sum(g.power_interval_w or 0.0 for g in s.gpus) + (s.cpu_power_w or 0.0)


def test_a_node_reporting_input_power_counts_it_and_the_rest_are_calibrated() -> None:
    """Half the fleet reports its BMC power: those count it exactly; the others count GPUs +
    CPU + the median of node - GPUs - CPU of the reporting ones; the type says so."""
    cplan = site_plan()
    sim = FleetSimulator(40, seed=3, bmc_share=0.5)
    view, samples = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW, keep_nodes=True)
    reporting = [i for i in range(40) if sim.reports_bmc[i]]
    others = [i for i in range(40) if not sim.reports_bmc[i]]
    assert len(reporting) == 20
    residuals = [sim.rest_w[i] for i in reporting]
    median = statistics.median(residuals)
    dgx = p.types[0]
    assert dgx.rest_from == "calibrated"
    assert dgx.rest_nodes == 20
    assert dgx.rest_w == pytest.approx(median, rel=1e-9)
    q1, _, q3 = statistics.quantiles(residuals, n=4, method="inclusive")
    assert dgx.rest_p25_w == pytest.approx(q1)
    assert dgx.rest_p75_w == pytest.approx(q3)
    measured = sum(sim.true_power_w(i, samples[i]) for i in reporting)
    calibrated = sum(_sensors_w(samples[i]) + median for i in others)
    assert p.nodes_w == pytest.approx(measured + calibrated, rel=1e-9)
    assert p.draw_by["measured"] == pytest.approx(measured, rel=1e-9)
    assert p.draw_by["calibrated"] == pytest.approx(calibrated, rel=1e-9)
    assert p.nodes_by == {"measured": 20, "calibrated": 20, "modelled": 0, "assumed": 0}
    assert dgx.draw_by == p.draw_by
    by_node = {n.node: n for n in p.node_draws or ()}
    one = by_node[sim.node_ids[reporting[0]]]
    assert (one.obtained, one.node_power_source) == ("measured", "dcmi")
    assert one.draw_w == pytest.approx(sim.true_power_w(reporting[0], samples[reporting[0]]))
    other = by_node[sim.node_ids[others[0]]]
    assert other.obtained == "calibrated"
    assert other.rest_w == pytest.approx(median)
    assert sum(r.draw_w for r in p.racks) == pytest.approx(p.nodes_w)
    assert sum(sum(r.draw_by.values()) for r in p.racks) == pytest.approx(p.nodes_w)
    # the truth of the whole fleet, half of it estimated: within 1 %
    truth = sum(sim.true_power_w(i, s) for i, s in enumerate(samples))
    assert p.nodes_w == pytest.approx(truth, rel=0.01)


@pytest.mark.parametrize(
    ("basis", "rest"), [("model", 2_300.0), ("nameplate", 3_900.0), ("calibrated", 2_300.0)]
)
def test_without_input_power_the_rest_comes_from_the_model_on_its_basis(
    basis: str, rest: float
) -> None:
    """No node reports input power: the model's parts (DRAM + NVMe + NICs + aux = 2.3 kW for
    a DGX-H100), plus the 1.6 kW nameplate slack only on rest_basis nameplate."""
    cplan = site_plan()
    assert dgx_rest_w(cplan, "nameplate") == 3_900.0
    sim = FleetSimulator(10, seed=5)
    view, samples = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW, rest_basis=basis)  # type: ignore[arg-type]
    assert p.nodes_w == pytest.approx(sum(_sensors_w(s) + rest for s in samples))
    assert p.types[0].rest_w == rest
    assert p.types[0].rest_from == ("nameplate" if basis == "nameplate" else "model")
    assert p.nodes_by["modelled"] == 10
    assert p.rest_basis == basis
    assert p.worst_it_w > p.it_w  # the worst case still counts every nameplate
    assert p.types[0].nameplate_w == 10 * 10_200


def test_calibration_needs_enough_reporting_nodes_and_ignores_the_model_basis() -> None:
    """Fewer than MIN_NODES reporting nodes keep the model; rest_basis model ignores them."""
    cplan = site_plan()
    sim = FleetSimulator(20, seed=8, bmc_share=(MIN_NODES - 1) / 20)
    view, _ = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    assert (p.types[0].rest_from, p.types[0].rest_w) == ("model", 2_300.0)
    assert p.nodes_by["measured"] == MIN_NODES - 1
    sim = FleetSimulator(20, seed=8, bmc_share=0.5)
    view, _ = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW, rest_basis="model")
    assert (p.types[0].rest_from, p.types[0].rest_w) == ("model", 2_300.0)
    assert p.nodes_by == {"measured": 10, "calibrated": 0, "modelled": 10, "assumed": 0}


def test_input_power_above_nameplate_is_clamped_and_left_out_of_the_calibration() -> None:
    """A BMC claiming 60 kW counts at the nameplate, flagged, and moves no calibration."""
    cplan = site_plan()
    sim = FleetSimulator(10, seed=2, bmc_share=1.0)
    view, samples = filled_view(sim, NOW)
    honest = compute_picture(cplan, view.nodes(), NOW)
    s = samples[4]
    view.on_sample(msgspec.structs.replace(s, ts=s.ts + 1, node_power_w=60_000.0), NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    assert p.clamped == (sim.node_ids[4],)
    assert p.nodes_w == pytest.approx(honest.nodes_w - sim.true_power_w(4, s) + 10_200)
    assert p.types[0].rest_nodes == 9


def test_an_out_of_band_reading_counts_while_fresh_even_for_a_silent_agent() -> None:
    """A node whose agent fell silent but whose BMC the collector polls counts the reading
    (measured, not stale); once the reading is older than 3 poll intervals it does not."""
    cplan = site_plan()
    sim = FleetSimulator(4, seed=1)
    view, _ = filled_view(sim, NOW)
    node = sim.node_ids[0]
    view.get(node).sample_received = NOW - 3600  # type: ignore[union-attr]
    view.on_node_power(node, PowerReading(7_000.0, "redfish", NOW - 5, 10.0))
    p = compute_picture(cplan, view.nodes(), NOW, staleness=Staleness(3), keep_nodes=True)
    assert p.stale_nodes == 0
    assert p.nodes_by["measured"] == 1
    drawn = {n.node: n for n in p.node_draws or ()}
    assert (drawn[node].draw_w, drawn[node].node_power_source) == (7_000.0, "redfish")
    later = compute_picture(cplan, view.nodes(), NOW + 30, staleness=Staleness(3))
    assert node in later.stale
    assert later.nodes_by["measured"] == 0
    # an older reading never replaces a newer one; a poll cannot add a node
    view.on_node_power(node, PowerReading(1.0, "redfish", NOW - 60, 10.0))
    assert view.get(node).node_power.watts == 7_000.0  # type: ignore[union-attr]
    view.on_node_power("x9999c0s0b0n0", PowerReading(1.0, "redfish", NOW, 10.0))
    assert "x9999c0s0b0n0" not in view


def test_a_stale_node_counts_at_its_last_input_power_reading_on_the_last_basis() -> None:
    """Its agent and BMC silent for an hour: on ``stale_basis = "last"`` the node counts at
    the last input power read (assumed, listed stale, clamped to its nameplate when that
    reading was absurd); on the default basis at its nameplate."""
    cplan = site_plan()
    sim = FleetSimulator(4, seed=1)
    view, _ = filled_view(sim, NOW)
    quiet, absurd = sim.node_ids[0], sim.node_ids[1]
    for node, watts in ((quiet, 7_000.0), (absurd, 60_000.0)):
        view.on_node_power(node, PowerReading(watts, "redfish", NOW - 3600, 10.0))
        view.get(node).sample_received = NOW - 3600  # type: ignore[union-attr]
    p = compute_picture(
        cplan, view.nodes(), NOW, staleness=Staleness(3), stale_basis="last", keep_nodes=True
    )
    drawn = {n.node: n for n in p.node_draws or ()}
    got = {
        n: (d.draw_w, d.basis, d.obtained, d.clamped, d.node_power_w)
        for n, d in drawn.items()
        if n in (quiet, absurd)
    }
    assert got == {
        quiet: (7_000.0, "last", "assumed", False, 7_000.0),
        absurd: (10_200.0, "last", "assumed", True, 60_000.0),
    }
    assert (sorted(p.stale), p.stale_nodes, p.nodes_by["assumed"]) == (sorted(got), 2, 2)
    default = compute_picture(cplan, view.nodes(), NOW, staleness=Staleness(3), keep_nodes=True)
    assert {n.node: n.draw_w for n in default.node_draws or () if n.node in got} == {
        quiet: 10_200.0,
        absurd: 10_200.0,
    }


def test_metrics_say_how_each_draw_was_obtained() -> None:
    """/metrics: nodes' draw and count per obtained, the type's rest figure and spread."""
    cplan = site_plan()
    sim = FleetSimulator(12, seed=4, bmc_share=0.5)
    view, _ = filled_view(sim, NOW)
    p = compute_picture(cplan, view.nodes(), NOW)
    series = {
        (s.name, tuple(s.labels.values())): s.value
        for fam in capacity_families(p)
        for s in fam.samples
    }
    assert series[("capwatch_capacity_nodes_draw_watts", ("measured",))] == p.draw_by["measured"]
    assert series[("capwatch_capacity_nodes_obtained", ("calibrated",))] == 6
    dgx = p.types[0]
    assert series[("capwatch_capacity_type_rest_watts", ("DGX-H100", "calibrated"))] == dgx.rest_w
    assert series[("capwatch_capacity_type_rest_nodes", ("DGX-H100",))] == 6
    assert series[("capwatch_capacity_type_rest_percentile_watts", ("DGX-H100", "25"))] == (
        dgx.rest_p25_w
    )
    assert series[("capwatch_capacity_type_obtained_draw_watts", ("DGX-H100", "modelled"))] == 0
