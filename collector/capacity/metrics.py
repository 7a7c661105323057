"""The capacity picture as Prometheus families for the collector's ``/metrics``.

A handful of site-wide series (cap, live IT and facility draw, headroom, worst case, node
counts by how they were counted, the snapshot's time), one series per node type (how many
more fit) and one per rack (draw and limit: hundreds at most, never per node or GPU).
Nothing before the first capacity cycle: a dashboard shows "no data", not a zero cap.
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from collector.capacity.picture import Picture

__all__ = ["MAX_RACK_SERIES", "capacity_families"]

MAX_RACK_SERIES = 1_000
"""Racks with series at most: those over their limit first, then by draw. Rack names come
from node names (xname cabinets), which a hostile node chooses; the series count must not."""


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=[])
    g.add_metric([], value)
    return g


def capacity_families(picture: Picture | None) -> list[Metric]:
    """The families of ``picture`` (the capacity job's latest; ``None``: none yet)."""
    if picture is None:
        return []
    p = picture
    out: list[Metric] = [
        _gauge("capwatch_capacity_cap_watts", "The site's IT power budget.", p.cap_w),
        _gauge("capwatch_capacity_it_draw_watts", "Live IT draw: nodes + fabric.", p.it_w),
        _gauge("capwatch_capacity_headroom_watts", "Cap minus live IT draw.", p.headroom_w),
        _gauge(
            "capwatch_capacity_headroom_ratio",
            "Headroom as a share of the cap.",
            p.headroom_pct / 100,
        ),
        _gauge(
            "capwatch_capacity_worst_case_it_watts",
            "IT draw if every node ran at its nameplate.",
            p.worst_it_w,
        ),
        _gauge("capwatch_capacity_fabric_watts", "Fabric power (the solver's model).", p.fabric_w),
        _gauge(
            "capwatch_capacity_snapshot_timestamp_seconds",
            "When the picture was computed (collector clock, Unix seconds).",
            p.at,
        ),
        _gauge(
            "capwatch_capacity_fits", "1 if the fleet fits under the cap, else 0.", float(p.fits)
        ),
    ]
    if p.facility_w is not None:
        out.append(_gauge("capwatch_capacity_facility_draw_watts", "IT draw x PUE.", p.facility_w))
    nodes = GaugeMetricFamily(
        "capwatch_capacity_nodes",
        "Nodes in the picture by how their draw was counted (measured; stale or offline "
        "on the stale basis; unmatched at the fallback; clamped to nameplate).",
        labels=["counted"],
    )
    for counted, n in (
        ("measured", p.measured_nodes),
        ("stale", p.stale_nodes),
        ("unmatched", p.unmatched_nodes),
        ("clamped", p.clamped_nodes),
    ):
        nodes.add_metric([counted], n)
    more = GaugeMetricFamily(
        "capwatch_capacity_more_nodes",
        "More nodes of this type alone that fit under the cap, at the type's live mean draw "
        "(basis=live) or with every node at nameplate (basis=nameplate).",
        labels=["node_type", "basis"],
    )
    type_draw = GaugeMetricFamily(
        "capwatch_capacity_type_draw_watts",
        "Live draw of a node type's nodes.",
        labels=["node_type"],
    )
    for t in p.types:
        more.add_metric([t.node_type, "live"], t.more_live)
        more.add_metric([t.node_type, "nameplate"], t.more_nameplate)
        type_draw.add_metric([t.node_type], t.draw_w)
    rack_draw = GaugeMetricFamily(
        "capwatch_capacity_rack_draw_watts", "Live draw of a rack's nodes.", labels=["rack"]
    )
    rack_limit = GaugeMetricFamily(
        "capwatch_capacity_rack_limit_watts", "A rack's power limit, where known.", labels=["rack"]
    )
    racks = sorted(p.racks, key=lambda r: (not r.over, -r.draw_w, r.rack))
    shown = racks[:MAX_RACK_SERIES]
    doc = f"Racks in the picture (series for at most {MAX_RACK_SERIES}: over-limit first)."
    out.append(_gauge("capwatch_capacity_racks", doc, len(racks)))
    for r in shown:
        rack_draw.add_metric([r.rack], r.draw_w)
        if r.limit_w is not None:
            rack_limit.add_metric([r.rack], r.limit_w)
    return [*out, nodes, more, type_draw, rack_draw, rack_limit]
