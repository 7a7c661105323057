"""``collector usage``'s arithmetic: what the leases allocate, ledger days folded into
periods per tenant, with cost.

Pure. A lease bills its contract: **allocated GPU-hours** are its nodes' GPUs x the hours it
was in force in the period (:func:`allocated_days`, from the lease table and the nodes'
inventories), whatever the monitoring saw, so hours when no collector ran are billed too.
What the nodes did stays measured: busy and utilisation-weighted GPU-hours and energy come
from the usage ledger (:func:`collector.store.ledger.ledger_days`: sums per UTC day,
tenant, lease and pool); **coverage** is the GPU-hours the samples covered over those
allocated, so a gap in the monitoring shows instead of passing for idle GPUs.
:func:`billed_days` puts the two together per (day, tenant, lease, pool); prices come from
``[billing]`` (:class:`collector.settings.BillingSettings`). Each group is priced before
folding (a tenant's leases may have their own contract prices), then summed per period and
tenant. Totals are the sums of the rows they total; ``fleet`` adds the hours no lease held
(which allocate nothing), so the tenants' allocated GPU-hours are the fleet's.

A lease holds a node while it names it: the nodes the lease table names now, and over
the history the nodes that joined or left it (``lease_moves``,
:class:`~collector.store.ledger.LeaseHistory`), each to the second, as in the ledger; the
pool its hours count in is the lease's pool, or for a lease of named nodes each node's pool
in each hour (:class:`~collector.store.ledger.PoolHistory`, as in the ledger). GPUs per
node come from its inventory (its agent's, else a declared one), else from what its
samples reported at the time, hour by hour (:func:`node_gpus`, as in the ledger).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from collector.governance.periods import Period, period_label

if TYPE_CHECKING:
    from collector.store.ledger import GpuHistory, LeaseHistory, PoolHistory

__all__ = [
    "Contract",
    "GroupKey",
    "Prices",
    "allocated_days",
    "billed_days",
    "in_force",
    "node_gpus",
    "usage_report",
]

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


class Contract(Protocol):
    """What a bill reads of a lease: a :class:`~collector.governance.state.Lease`, or the
    lease table's row (:class:`~collector.store.ledger.LeaseHeld`)."""

    @property
    def name(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def pool(self) -> str | None: ...
    @property
    def nodes(self) -> tuple[str, ...]: ...
    def interval(self) -> tuple[float, float | None]: ...


GroupKey = tuple[int, str, str, str]
"""(UTC day number, tenant, lease, pool): one group of the ledger's daily sums."""
_DAY_S: Final = 86_400


def node_gpus(
    node: str,
    inventory: Mapping[str, int],
    reported: GpuHistory | None,
    since: float,
    until: float,
) -> list[tuple[float, float, int]]:
    """(start, end, GPUs) of ``node`` over [since, until), a span per change
    (:func:`collector.nodefacts.gpu_count`): ``inventory``'s (node -> GPUs of its
    inventory) all along, else what its samples ``reported`` then
    (:class:`~collector.store.ledger.GpuHistory`: each hour's own count, an hour it was
    silent in its last report's before); 0 with neither."""
    from collector.nodefacts import gpu_count  # noqa: PLC0415 (usage's own imports stay few)

    n = inventory.get(node)
    if n is not None or reported is None:
        return [(since, until, gpu_count(n, None))]
    return [(a, b, gpu_count(None, k)) for a, b, k in reported.spans(node, since, until)]


def in_force(span: tuple[float, float | None], start: float, end: float) -> tuple[float, float]:
    """The part (lo, hi) of [start, end) inside a lease's ``span``
    (:meth:`~collector.governance.state.Lease.interval`; end ``None``: open); empty when
    ``hi <= lo``. The ledger's hours and the contract's allocation both cut leases here."""
    s, e = span
    return max(start, s), min(end, math.inf if e is None else e)


def _days(lo: float, hi: float) -> Iterable[tuple[int, float, float]]:
    """[lo, hi) cut at UTC midnights: (day number, start, end) per day."""
    day = math.floor(lo / _DAY_S)
    while lo < hi:
        end = min(hi, (day + 1) * _DAY_S)
        yield day, lo, end
        lo, day = end, day + 1


def allocated_days(
    leases: Iterable[Contract],
    gpus: Mapping[str, int],
    pools: PoolHistory,
    since: float,
    until: float,
    *,
    reported: GpuHistory | None = None,
    tenant: str | None = None,
    lease: str | None = None,
    pool: str | None = None,
    members: LeaseHistory | None = None,
) -> dict[GroupKey, float]:
    """GPU-hours each lease allocated in [since, until) per UTC day and pool: its nodes'
    GPUs (:func:`node_gpus` of ``gpus``, node -> GPUs by inventory, and ``reported``, what
    the nodes with none reported) x the hours it was in force and held the node
    (``members``: the leases' node moves since ``since``; ``None``: none, each lease held
    the nodes it holds now), see the module docstring. ``tenant``/``lease``/``pool``: only
    those groups."""
    out: dict[GroupKey, float] = {}
    for held in leases:
        if (tenant is not None and held.tenant != tenant) or (
            lease is not None and held.name != lease
        ):
            continue
        lo, hi = in_force(held.interval(), since, until)
        if hi <= lo:
            continue
        # Nodes that stayed in one pool share one span: summed first, then cut into days.
        spans: dict[tuple[float, float, str], int] = {}
        now = set(held.nodes)
        nodes = held.nodes if members is None else members.nodes(held.name, held.nodes)
        for node in nodes:
            times = (
                [(lo, hi)]
                if members is None
                else members.spans(held.name, node, node in now, lo, hi)
            )
            for a, b in times:
                for c, d, n in node_gpus(node, gpus, reported, a, b):
                    parts = pools.spans(node, c, d) if held.pool is None else [(c, d, held.pool)]
                    for part in parts:
                        spans[part] = spans.get(part, 0) + n
        for (a, b, where), n in spans.items():
            if not n or (pool is not None and where != pool):
                continue
            for day, d0, d1 in _days(a, b):
                key = (day, held.tenant, held.name, where)
                out[key] = out.get(key, 0.0) + n * (d1 - d0) / 3600.0
    return out


_MEASURED: Final = (*_SUMMED[1:7], "model_rows", "parts_rows", "measured_rows")
"""What the ledger measured of a group (all but allocated and the costs)."""


def billed_days(
    days: Iterable[Mapping[str, Any]], allocated: Mapping[GroupKey, float]
) -> list[dict[str, Any]]:
    """The ledger's ``days`` with each leased group's allocated GPU-hours taken from
    ``allocated`` (:func:`allocated_days`), and a row of nothing measured for each group
    the leases allocated and the ledger has no hour of (no collector ran, no node
    reported)."""
    out: list[dict[str, Any]] = []
    seen: set[GroupKey] = set()
    for d in days:
        row = dict(d)
        if row["tenant"] is not None:
            key = (int(row["day"]), row["tenant"], row["lease"], row["pool"])
            seen.add(key)
            row["allocated_gpu_hours"] = allocated.get(key, 0.0)
        out.append(row)
    for key, hours in allocated.items():
        if key not in seen:
            day, tenant, name, where = key
            out.append(
                {
                    "day": day,
                    "tenant": tenant,
                    "lease": name,
                    "pool": where,
                    "allocated_gpu_hours": hours,
                    **dict.fromkeys(_MEASURED, 0),
                }
            )
    return out


def _basis(model: int, parts: int, measured: int) -> str:
    kinds = [k for k, n in (("measured", measured), ("model", model), ("gpu+cpu", parts)) if n]
    return "none" if not kinds else kinds[0] if len(kinds) == 1 else "mixed"


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    alloc = row["allocated_gpu_hours"]
    busy = row["busy_gpu_hours"]
    covered = row.pop("_covered")
    row["utilisation_pct"] = round(100.0 * busy / alloc, 2) if alloc > 0 else None
    # GPU-hours with samples over those allocated; an hour's sample intervals can add up
    # to a little over the hour, so never over 100 %.
    row["coverage_pct"] = round(min(100.0, 100.0 * covered / alloc), 2) if alloc > 0 else None
    row["idle_leased_gpu_hours"] = max(alloc - busy, 0.0)
    row["node_kwh_basis"] = _basis(row.pop("_model"), row.pop("_parts"), row.pop("_measured"))
    for key in (*_SUMMED, "idle_leased_gpu_hours"):
        row[key] = round(row[key], 6)
    return row


def _empty(**keys: Any) -> dict[str, Any]:
    return {
        **keys,
        **dict.fromkeys(_SUMMED, 0.0),
        "_covered": 0.0,
        "_model": 0,
        "_parts": 0,
        "_measured": 0,
    }


def _add(acc: dict[str, Any], r: Mapping[str, Any]) -> None:
    for key in _SUMMED:
        acc[key] += r[key]
    acc["_covered"] += r["covered_gpu_hours"]
    acc["_model"] += r["model_rows"]
    acc["_parts"] += r["parts_rows"]
    acc["_measured"] += r["measured_rows"]


def usage_report(days: Iterable[Mapping[str, Any]], by: Period, prices: Prices) -> dict[str, Any]:
    """Rows per (period, tenant), ``totals`` over them, ``fleet`` (every ledger row,
    leased or not), from :func:`billed_days`."""
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
        # The GPU-hours with samples a lease's hours hold: what its coverage counts.
        priced["covered_gpu_hours"] = priced["reported_gpu_hours"] if d["tenant"] else 0.0
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
