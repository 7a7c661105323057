"""The usage ledger as a picture: a tenant's (or every tenant's) GPU-hours and energy per day.

Two panels over the days of the window: allocated against busy GPU-hours (bars, busy in
front), then energy (GPU and CPU kWh stacked, the node's kWh as a mark per day, its basis in the
legend). The title gives the window's totals as ``collector usage`` prints them. Rows are
:func:`collector.governance.billing.usage_report`'s, by day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from collector.plot.figures import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ledger_figure"]


def _per_day(rows: Sequence[Mapping[str, Any]], days: Sequence[dt.date]) -> dict[str, list[float]]:
    """Each summed column per day (tenants added), 0 on days without rows."""
    keys = ("allocated_gpu_hours", "busy_gpu_hours", "gpu_kwh", "cpu_kwh", "node_kwh")
    index = {d.isoformat(): i for i, d in enumerate(days)}
    out = {k: [0.0] * len(days) for k in keys}
    for r in rows:
        i = index.get(r["period"])
        if i is None:
            continue
        for k in keys:
            out[k][i] += float(r[k] or 0.0)
    return out


def ledger_figure(report: Mapping[str, Any], subject: str, first: dt.date, last: dt.date) -> Figure:
    """Allocated vs busy GPU-hours and energy per day from ``report`` (``usage_report`` by
    day), for the days ``first`` to ``last`` (UTC, included)."""
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    rows = report["rows"]
    per = _per_day(rows, days)
    tot = report["totals"]
    util = tot.get("utilisation_pct")
    fig = new_figure(
        f"{subject}: GPU-hours and energy per day, {first.isoformat()} to {last.isoformat()}"
    )
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = list(range(len(days)))
    top.bar(x, per["allocated_gpu_hours"], color="tab:blue", alpha=0.35, label="allocated")
    top.bar(x, per["busy_gpu_hours"], width=0.5, color="tab:blue", label="busy")
    top.set_ylabel("GPU-hours per day")
    top.grid(visible=True, axis="y", alpha=0.3)
    top.legend(loc="upper left")
    top.set_title(
        f"allocated {tot['allocated_gpu_hours']:,.1f} GPU-h, busy "
        f"{tot['busy_gpu_hours']:,.1f} GPU-h"
        + ("" if util is None else f" ({util:.1f} %)")
        + f", idle leased {tot['idle_leased_gpu_hours']:,.1f} GPU-h; node "
        f"{tot['node_kwh']:,.1f} kWh ({tot['node_kwh_basis']}); cost "
        f"{tot['cost']:,.2f} {report['currency']}",
        fontsize=11,
    )
    bottom.bar(x, per["gpu_kwh"], color="tab:green", label="GPU (energy counters)")
    bottom.bar(x, per["cpu_kwh"], bottom=per["gpu_kwh"], color="tab:olive", label="CPU (RAPL)")
    bottom.plot(
        x,
        per["node_kwh"],
        color="black",
        linestyle="none",
        marker="_",
        markersize=14,
        markeredgewidth=3,
        label=f"node ({tot['node_kwh_basis']})",
    )
    bottom.set_ylabel("energy (kWh per day)")
    bottom.set_xlabel("day (UTC)")
    bottom.grid(visible=True, axis="y", alpha=0.3)
    bottom.legend(loc="upper left")
    step = max(1, len(days) // 16)
    bottom.set_xticks(x[::step], [d.strftime("%m-%d") for d in days[::step]])
    bottom.set_xlim(-0.6, len(days) - 0.4)
    if not rows:
        top.text(0.5, 0.5, "no leased hours in this window", ha="center", transform=top.transAxes)
    return fig
