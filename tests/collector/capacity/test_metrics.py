"""The capacity picture's /metrics families: bounded however many racks nodes invent."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.core import Metric

from collector.capacity.metrics import MAX_RACK_SERIES, capacity_families
from collector.capacity.picture import RackDraw
from tests.collector.capacity.test_rules import _picture


def _series(families: list[Metric], name: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for fam in families:
        for s in fam.samples:
            if s.name == name:
                out[tuple(s.labels.values())] = s.value
    return out


def test_rack_series_are_capped_with_the_over_limit_racks_kept() -> None:
    """5,000 invented racks: at most MAX_RACK_SERIES rack series, every rack over its limit
    among them, and the true count in capwatch_capacity_racks."""
    racks = [RackDraw(rack=f"x{i}", nodes=1, draw_w=100.0 + i, limit_w=None) for i in range(5_000)]
    racks.append(RackDraw(rack="hot", nodes=4, draw_w=50.0, limit_w=40.0))  # small but over
    families = capacity_families(replace(_picture(), racks=tuple(racks)))
    draw = _series(families, "capwatch_capacity_rack_draw_watts")
    assert len(draw) == MAX_RACK_SERIES
    assert ("hot",) in draw
    assert ("x4999",) in draw  # the largest draw next
    assert ("x0",) not in draw
    assert _series(families, "capwatch_capacity_racks") == {(): 5_001}
    assert _series(families, "capwatch_capacity_rack_limit_watts") == {("hot",): 40.0}


def test_no_picture_no_series() -> None:
    """Before the first capacity cycle: nothing (a dashboard shows no data, not a zero cap)."""
    assert capacity_families(None) == []
