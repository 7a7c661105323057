"""The capacity picture as Prometheus families for the collector's ``/metrics``.

A handful of site-wide series (cap, live IT and facility draw, headroom, worst case, node
counts by how they were counted, the nodes' draw and count by how it was obtained, the
snapshot's time), a few per node type (how many more fit, draw by how obtained, the figure
for its unreported parts and its spread) and one per rack (draw and limit: hundreds at
most, never per node or GPU).
Nothing before the first capacity cycle: a dashboard shows "no data", not a zero cap.
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from collector.capacity.picture import OBTAINED, Picture

__all__ = ["MAX_RACK_SERIES", "capacity_families", "threshold_families"]

MAX_RACK_SERIES = 1_000
"""Racks with series at most: those over their limit first, then by draw. Rack names come
from node names (xname cabinets), which a hostile node chooses; the series count must not."""


def threshold_families(warn_pct: float, critical_pct: float) -> list[Metric]:
    """The capacity alerts' thresholds as shares of the cap, ``level`` ``warning`` and
    ``critical`` (``capacity.warn_pct``, ``capacity.critical_pct``): dashboards draw their
    threshold lines as ``cap_watts x`` this, so one dashboard follows every site's settings."""
    g = GaugeMetricFamily(
        "capwatch_capacity_threshold_ratio",
        "Share of the cap at which the capacity alert of this level fires (settings "
        "capacity.warn_pct, capacity.critical_pct).",
        labels=["level"],
    )
    g.add_metric(["warning"], warn_pct / 100)
    g.add_metric(["critical"], critical_pct / 100)
    return [g]


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
        "capwatch_capacity_rack_draw_watts",
        "Live draw of a rack: its PDUs' reading while fresh, else its nodes' sum.",
        labels=["rack"],
    )
    rack_limit = GaugeMetricFamily(
        "capwatch_capacity_rack_limit_watts", "A rack's power limit, where known.", labels=["rack"]
    )
    racks = sorted(p.racks, key=lambda r: (not r.over, -r.draw_w, r.rack))
    shown = racks[:MAX_RACK_SERIES]
    doc = f"Racks in the picture (series for at most {MAX_RACK_SERIES}: over-limit first)."
    out.append(_gauge("capwatch_capacity_racks", doc, len(racks)))
    rack_nodes = GaugeMetricFamily(
        "capwatch_capacity_rack_nodes_draw_watts",
        "For a rack counted at its PDUs' reading (capwatch_capacity_rack_draw_watts is that "
        "reading, obtained 'measured (pdu)'): what its nodes sum to, counted one by one.",
        labels=["rack"],
    )
    for r in shown:
        rack_draw.add_metric([r.rack], r.draw_w)
        if r.limit_w is not None:
            rack_limit.add_metric([r.rack], r.limit_w)
        if r.nodes_w is not None:
            rack_nodes.add_metric([r.rack], r.nodes_w)
    obtained = GaugeMetricFamily(
        "capwatch_capacity_nodes_draw_watts",
        "Nodes' live draw by how it was obtained: measured (input power from the BMC or PSU "
        "sensors), calibrated or modelled (GPUs + CPU read, the unreported parts calibrated "
        "per type or from its model), assumed (no fresh reading: on a basis), measured (pdu) "
        "(the nodes of racks counted at their PDUs' reading).",
        labels=["obtained"],
    )
    obtained_n = GaugeMetricFamily(
        "capwatch_capacity_nodes_obtained",
        "Nodes by how their live draw was obtained (as capwatch_capacity_nodes_draw_watts).",
        labels=["obtained"],
    )
    for k in OBTAINED:
        obtained.add_metric([k], p.draw_by.get(k, 0.0))
        obtained_n.add_metric([k], p.nodes_by.get(k, 0))
    type_obtained = GaugeMetricFamily(
        "capwatch_capacity_type_obtained_draw_watts",
        "Live draw of a node type's nodes by how it was obtained.",
        labels=["node_type", "obtained"],
    )
    rest = GaugeMetricFamily(
        "capwatch_capacity_type_rest_watts",
        "What one node's unreported parts (DRAM, NVMe, NICs, fans, PSU losses) count at when "
        "its input power is not measured; rest_from: calibrated (median of node - GPUs - CPU "
        "over the type's nodes reporting all three), model, or nameplate (model + slack).",
        labels=["node_type", "rest_from"],
    )
    spread = GaugeMetricFamily(
        "capwatch_capacity_type_rest_percentile_watts",
        "Quartiles of node - GPUs - CPU over the nodes a type's calibration came from.",
        labels=["node_type", "percentile"],
    )
    rest_n = GaugeMetricFamily(
        "capwatch_capacity_type_rest_nodes",
        "Nodes a type's calibration of its unreported parts came from (0: the model).",
        labels=["node_type"],
    )
    for t in p.types:
        for k in OBTAINED:
            type_obtained.add_metric([t.node_type, k], t.draw_by.get(k, 0.0))
        rest.add_metric([t.node_type, t.rest_from], t.rest_w)
        rest_n.add_metric([t.node_type], t.rest_nodes)
        if t.rest_p25_w is not None and t.rest_p75_w is not None:
            spread.add_metric([t.node_type, "25"], t.rest_p25_w)
            spread.add_metric([t.node_type, "75"], t.rest_p75_w)
    return [
        *out,
        nodes,
        more,
        type_draw,
        rack_draw,
        rack_limit,
        rack_nodes,
        obtained,
        obtained_n,
        type_obtained,
        rest,
        spread,
        rest_n,
    ]
