"""Time-series pictures: a node's or the fleet's utilisation and power, and capacity history.

Matplotlib (the optional ``plot`` extra), object API only (no pyplot state), Agg backend.
Every picture is :data:`WIDTH_PX` x :data:`HEIGHT_PX`, with a title, units on the axes and
a legend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shared.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["HEIGHT_PX", "WIDTH_PX", "capacity_figure", "new_figure", "save", "usage_figure"]

WIDTH_PX: Final = 1600
HEIGHT_PX: Final = 1000
_DPI: Final = 100


def new_figure(title: str) -> Figure:
    """An empty 1600x1000 figure with ``title``; :class:`ConfigError` without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415  (optional extra)

        matplotlib.use("Agg")
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            "plots need matplotlib, which is not installed: pip install 'capwatch[plot]'",
            field="plot",
        ) from exc
    # Names in these pictures were chosen by operators and nodes (racks, pools, GPU models):
    # text between two `$` must be drawn as written, not parsed as TeX (a rack named
    # `r$\frac$x` raised ParseSyntaxException). Text made from here on reads this setting.
    matplotlib.rcParams["text.parse_math"] = False
    fig = Figure(figsize=(WIDTH_PX / _DPI, HEIGHT_PX / _DPI), dpi=_DPI, layout="constrained")
    fig.suptitle(title, fontsize=16)
    return fig


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG at exactly 1600x1000."""
    try:
        fig.savefig(path, dpi=_DPI, format="png")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", field="--out") from exc


def _times(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Times as numpy datetime64 (UTC), what matplotlib's date axis takes."""
    import numpy as np  # noqa: PLC0415  (comes with matplotlib)

    ms = [round((r["t"] if "t" in r else r["at"]) * 1000) for r in rows]
    return np.array(ms, dtype="datetime64[ms]")


def _window(ax: Any, start: float, end: float) -> None:
    """The time axis spans the asked window (one point alone would span years)."""
    import numpy as np  # noqa: PLC0415

    ax.set_xlim(np.datetime64(round(start * 1000), "ms"), np.datetime64(round(end * 1000), "ms"))


def _nums(rows: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    return [float("nan") if r.get(key) is None else r[key] * scale for r in rows]


def _style(rows: Sequence[object]) -> dict[str, Any]:
    """Lines, with markers when there are few points (one point draws no line)."""
    return {"marker": "o", "markersize": 4} if len(rows) < 60 else {}


def usage_figure(
    rows: Sequence[Mapping[str, Any]], subject: str, start: float, end: float
) -> Figure:
    """CPU, memory and GPU utilisation (%) above GPU and CPU power (kW) over time."""
    fig = new_figure(f"{subject}: utilisation and power")
    top, bottom = fig.subplots(2, 1, sharex=True)
    t = _times(rows)
    st = _style(rows)
    top.plot(t, _nums(rows, "cpu_pct"), label="CPU utilisation", **st)
    top.plot(t, _nums(rows, "mem_pct"), label="host memory used", **st)
    top.plot(t, _nums(rows, "gpu_util_pct"), label="GPU utilisation (mean)", **st)
    top.set_ylabel("percent (%)")
    top.set_ylim(0, 105)
    top.legend(loc="upper left")
    top.grid(visible=True, alpha=0.3)
    bottom.plot(t, _nums(rows, "gpu_power_w", 1e-3), label="GPU power", **st)
    bottom.plot(t, _nums(rows, "cpu_power_w", 1e-3), label="CPU package power (RAPL)", **st)
    bottom.set_ylim(bottom=0)
    _window(bottom, start, end)
    bottom.set_ylabel("power (kW)")
    bottom.set_xlabel("time (UTC)")
    bottom.legend(loc="upper left")
    bottom.grid(visible=True, alpha=0.3)
    if not rows:
        top.text(0.5, 0.5, "no samples in this window", ha="center", transform=top.transAxes)
    return fig


def _obtained_line(latest: Mapping[str, Any] | None) -> str:
    """How the newest picture's node draw was obtained, as a second title line."""
    by = (latest or {}).get("draw_by") or {}
    n = (latest or {}).get("nodes_by") or {}
    if not by:
        return ""
    parts = ", ".join(
        f"{by.get(k, 0.0) / 1e6:,.3f} MW {k} ({n.get(k, 0):,})"
        for k in ("measured", "calibrated", "modelled", "assumed")
    )
    return f"\nnodes now: {parts}; rest_basis {(latest or {}).get('rest_basis', '-')}"


def capacity_figure(
    rows: Sequence[Mapping[str, Any]],
    plan: str,
    start: float,
    end: float,
    *,
    latest: Mapping[str, Any] | None = None,
) -> Figure:
    """Live IT draw against the cap over time, with the 90/98 % lines and the worst case;
    ``latest`` (the newest snapshot's picture) says how its nodes' draw was obtained."""
    fig = new_figure(f"Site IT draw against the cap ({plan or 'site plan'})")
    ax = fig.subplots()
    t = _times(rows)
    cap = _nums(rows, "cap_w", 1e-6)
    ax.plot(
        t,
        _nums(rows, "it_w", 1e-6),
        color="tab:blue",
        linewidth=2,
        label="live IT draw",
        **_style(rows),
    )
    ax.plot(
        t,
        _nums(rows, "worst_it_w", 1e-6),
        color="tab:purple",
        linestyle=":",
        linewidth=2,
        label="worst case (every node at nameplate)",
    )
    if any(r.get("facility_w") is not None for r in rows):
        ax.plot(
            t,
            _nums(rows, "facility_w", 1e-6),
            color="tab:gray",
            alpha=0.7,
            label="facility draw (IT x PUE)",
        )
    ax.plot(t, cap, color="black", linewidth=2, label="cap (IT budget)")
    ax.plot(t, [c * 0.98 for c in cap], color="tab:red", linestyle="--", label="98 % (critical)")
    ax.plot(t, [c * 0.90 for c in cap], color="tab:orange", linestyle="--", label="90 % (warning)")
    ax.set_ylabel("power (MW)")
    ax.set_xlabel("time (UTC)")
    ax.set_ylim(bottom=0)
    _window(ax, start, end)
    ax.grid(visible=True, alpha=0.3)
    ax.legend(loc="center left")
    if rows:
        last = rows[-1]
        cap_w = last["cap_w"] or 1.0
        ax.set_title(
            f"now: {last['it_w'] / 1e6:,.3f} MW ({last['it_w'] / cap_w:.1%} of the "
            f"{cap_w / 1e6:,.2f} MW cap), headroom {last['headroom_w'] / 1e6:,.3f} MW; "
            f"worst case {last['worst_it_w'] / 1e6:,.3f} MW; {last['stale_nodes']} of "
            f"{last['nodes']} nodes counted at nameplate (stale/offline)" + _obtained_line(latest),
            fontsize=11,
        )
    else:
        ax.text(
            0.5, 0.5, "no capacity snapshots in this window", ha="center", transform=ax.transAxes
        )
    return fig
