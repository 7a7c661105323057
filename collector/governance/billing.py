"""``collector usage``'s arithmetic: ledger days folded into periods per tenant, with cost.

Pure: the rows come from :func:`collector.store.ledger.ledger_days` (sums per UTC day,
tenant, lease and pool), the prices from ``[billing]``
(:class:`collector.settings.BillingSettings`). Each ledger group is priced before folding
(a tenant's leases may have their own contract prices), then summed per period and tenant.
Totals are the sums of the rows they total; ``fleet`` adds the hours no lease held.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, Protocol

__all__ = ["BY", "By", "Prices", "period_label", "usage_report"]

By = Literal["day", "week", "month"]
BY: Final = ("day", "week", "month")

_SUMMED: Final = (
    "allocated_gpu_hours",
    "busy_gpu_hours",
    "used_gpu_hours",
    "reported_gpu_hours",
    "gpu_kwh",
    "cpu_kwh",
    "node_kwh",
    "gpu_hour_cost",
    "energy_cost",
    "cost",
)


class Prices(Protocol):
    """What pricing needs of ``[billing]``."""

    @property
    def kwh(self) -> float: ...
    @property
    def currency(self) -> str: ...
    def gpu_hour_price(self, tenant: str | None, lease: str) -> float: ...


def period_label(day: int, by: By) -> str:
    """The period (UTC) holding day number ``day`` (days since 1970-01-01)."""
    d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    if by == "day":
        return d.isoformat()
    if by == "week":
        year, week, _ = d.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{d.year}-{d.month:02d}"


def _basis(model: int, parts: int, measured: int) -> str:
    kinds = [k for k, n in (("measured", measured), ("model", model), ("gpu+cpu", parts)) if n]
    return "none" if not kinds else kinds[0] if len(kinds) == 1 else "mixed"


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    alloc = row["allocated_gpu_hours"]
    busy = row["busy_gpu_hours"]
    row["utilisation_pct"] = round(100.0 * busy / alloc, 2) if alloc > 0 else None
    row["idle_leased_gpu_hours"] = max(alloc - busy, 0.0)
    row["node_kwh_basis"] = _basis(row.pop("_model"), row.pop("_parts"), row.pop("_measured"))
    for key in (*_SUMMED, "idle_leased_gpu_hours"):
        row[key] = round(row[key], 6)
    return row


def _empty(**keys: Any) -> dict[str, Any]:
    return {**keys, **dict.fromkeys(_SUMMED, 0.0), "_model": 0, "_parts": 0, "_measured": 0}


def _add(acc: dict[str, Any], r: Mapping[str, Any]) -> None:
    for key in _SUMMED:
        acc[key] += r[key]
    acc["_model"] += r["model_rows"]
    acc["_parts"] += r["parts_rows"]
    acc["_measured"] += r["measured_rows"]


def usage_report(days: Iterable[Mapping[str, Any]], by: By, prices: Prices) -> dict[str, Any]:
    """Rows per (period, tenant), ``totals`` over them, ``fleet`` (every ledger row,
    leased or not)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    totals = _empty()
    fleet = _empty()
    for d in days:
        priced = {
            **{k: float(d[k] or 0.0) for k in _SUMMED[:7]},
            "model_rows": d["model_rows"] or 0,
            "parts_rows": d["parts_rows"] or 0,
            "measured_rows": d["measured_rows"] or 0,
        }
        price = prices.gpu_hour_price(d["tenant"], d["lease"]) if d["tenant"] is not None else 0
        priced["gpu_hour_cost"] = priced["allocated_gpu_hours"] * price
        priced["energy_cost"] = priced["node_kwh"] * prices.kwh if d["tenant"] else 0.0
        priced["cost"] = priced["gpu_hour_cost"] + priced["energy_cost"]
        _add(fleet, priced)
        if d["tenant"] is None:
            continue
        period = period_label(int(d["day"]), by)
        acc = rows.get((period, d["tenant"]))
        if acc is None:
            acc = rows[(period, d["tenant"])] = _empty(period=period, tenant=d["tenant"])
        _add(acc, priced)
        _add(totals, priced)
    out = [_finish(rows[k]) for k in sorted(rows)]
    return {
        "currency": prices.currency,
        "rows": out,
        "totals": _finish(totals),
        "fleet": _finish(fleet),
    }
