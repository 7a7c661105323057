"""A rack whose PDUs were read counts at their reading, while fresh, in the rack constraint
and the site's total; each node type's share of the rack moves to ``measured (pdu)``."""

from __future__ import annotations

import pytest

from agent.simulate import FleetSimulator
from collector.capacity.compute import compute_picture
from collector.capacity.metrics import capacity_families
from collector.capacity.picture import PDU, picture_from_dict, picture_to_dict
from collector.nodefacts import PowerReading, Staleness
from tests.collector.capacity.helpers import filled_view, site_plan

NOW = 1_790_000_000.0


def _fleet() -> tuple[FleetSimulator, list[str]]:
    sim = FleetSimulator(300, seed=7)  # x1000: 256 nodes, x1001: 44
    return sim, sim.node_ids


def test_a_rack_with_a_fresh_pdu_reading_counts_at_it_and_moves_the_site_total() -> None:
    """x1001 read at 123 kW by its PDUs: the rack draws 123 kW, the site's nodes draw the
    other rack's sum + 123 kW, and draw_by says measured (pdu) for x1001's 44 nodes."""
    cplan = site_plan()
    sim, _ = _fleet()
    view, _ = filled_view(sim, NOW)
    plain = compute_picture(cplan, view.nodes(), NOW)
    by_rack = {r.rack: r for r in plain.racks}
    p = compute_picture(
        cplan,
        view.nodes(),
        NOW,
        rack_power={"x1001": PowerReading(123_000.0, "pdu", NOW - 5, 10.0)},
        keep_nodes=True,
    )
    racks = {r.rack: r for r in p.racks}
    assert racks["x1001"].draw_w == 123_000.0
    assert racks["x1001"].by_pdu
    assert racks["x1001"].nodes_w == pytest.approx(by_rack["x1001"].draw_w)
    assert racks["x1001"].draw_by[PDU] == 123_000.0
    assert not racks["x1000"].by_pdu
    assert racks["x1000"].draw_w == pytest.approx(by_rack["x1000"].draw_w)
    assert p.nodes_w == pytest.approx(by_rack["x1000"].draw_w + 123_000.0)
    assert p.it_w == pytest.approx(plain.it_w - by_rack["x1001"].draw_w + 123_000.0)
    assert p.draw_by[PDU] == pytest.approx(123_000.0)
    assert p.nodes_by[PDU] == 44
    assert sum(p.nodes_by.values()) == 300
    assert sum(p.draw_by.values()) == pytest.approx(p.nodes_w)
    assert sum(t.draw_w for t in p.types) == pytest.approx(p.nodes_w)
    again = picture_from_dict(picture_to_dict(p))
    assert {r.rack: r.nodes_w for r in again.racks} == {r.rack: r.nodes_w for r in p.racks}
    text = {m.name: m for m in capacity_families(p)}
    samples = {
        (s.labels.get("obtained"), s.labels.get("rack")): s.value
        for fam in ("capwatch_capacity_nodes_draw_watts", "capwatch_capacity_rack_nodes_draw_watts")
        for s in text[fam].samples
    }
    assert samples[(PDU, None)] == pytest.approx(123_000.0)
    assert samples[(None, "x1001")] == pytest.approx(by_rack["x1001"].draw_w)


def test_a_pdu_reading_over_its_rack_limit_binds_the_site() -> None:
    """The PDUs say the rack draws above its 2,700 kW limit: the site is limited by
    rack_power, whatever the nodes' own sum says."""
    cplan = site_plan()
    sim, _ = _fleet()
    view, _ = filled_view(sim, NOW)
    p = compute_picture(
        cplan, view.nodes(), NOW, rack_power={"x1001": PowerReading(2.8e6, "pdu", NOW, 10.0)}
    )
    assert p.binding == "rack_power"
    assert not p.fits
    assert p.racks[0].rack == "x1001"


def test_a_stale_pdu_reading_or_a_rack_without_nodes_changes_nothing() -> None:
    """A reading older than stale_intervals x its interval, or for a rack no node stands in,
    is left out: the picture is the nodes' own sum."""
    cplan = site_plan()
    sim, _ = _fleet()
    view, _ = filled_view(sim, NOW)
    plain = compute_picture(cplan, view.nodes(), NOW)
    old = PowerReading(1.0, "pdu", NOW - 31, 10.0)
    p = compute_picture(
        cplan,
        view.nodes(),
        NOW,
        staleness=Staleness(3.0),
        rack_power={"x1001": old, "x9999": PowerReading(5e5, "pdu", NOW, 10.0)},
    )
    assert p.nodes_w == pytest.approx(plain.nodes_w)
    assert not any(r.by_pdu for r in p.racks)
    assert PDU not in p.draw_by


def test_a_rack_with_nodes_left_out_counts_at_its_nodes_not_its_pdus() -> None:
    """--remove of some of a rack's nodes: the PDUs still read them, so the rack counts at its
    remaining nodes' sum."""
    cplan = site_plan()
    sim, ids = _fleet()
    view, _ = filled_view(sim, NOW)
    gone = frozenset(ids[-4:])  # in x1001
    plain = compute_picture(cplan, view.nodes(), NOW, exclude=gone)
    p = compute_picture(
        cplan,
        view.nodes(),
        NOW,
        exclude=gone,
        rack_power={"x1001": PowerReading(123_000.0, "pdu", NOW, 10.0)},
    )
    assert p.nodes_w == pytest.approx(plain.nodes_w)
    assert not any(r.by_pdu for r in p.racks)
