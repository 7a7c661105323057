"""The usage ledger in the store: per hour, node and lease, what was held, used and drawn.

Rows are made by :mod:`collector.governance.ledger` from the 1-hour rollups and the leases,
and written here, a whole hour at a time (an hour's rows are replaced, so a recompute gives
the same rows, and a lease edited afterwards re-attributes the hours recomputed). Reads are
:class:`~collector.store.query.Query` objects for ``collector usage`` and for the quota's
measured basis.

Portable SQL (``ON CONFLICT``; no SQLite-only functions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.store.query import Query, first_value, single

if TYPE_CHECKING:
    from collector.store.db import Store

__all__ = [
    "LEDGER_AT_KEY",
    "LEDGER_COLUMNS",
    "LEDGER_RETENTION_SQL",
    "LedgerRow",
    "dirty_hours",
    "ledger_at",
    "ledger_days",
    "pool_of_nodes",
    "tenant_used_hours",
    "write_ledger",
]

LEDGER_AT_KEY: Final = "ledger_at"
"""Meta row: until when (collector clock, Unix s) the ledger holds what the rollups held."""


class LedgerRow(NamedTuple):
    """One row of ``usage_ledger`` (without ``computed``), in column order."""

    hour: int
    node: str
    lease: str
    tenant: str | None
    pool: str
    gpus: int
    held_h: float
    allocated_gpu_h: float
    busy_gpu_h: float
    used_gpu_h: float
    reported_gpu_h: float
    gpu_kwh: float
    cpu_kwh: float
    node_kwh: float | None
    node_kwh_basis: str


LEDGER_COLUMNS: Final = (*LedgerRow._fields, "computed")
_INSERT: Final = (
    f"INSERT INTO usage_ledger ({', '.join(LEDGER_COLUMNS)})",
    len(LEDGER_COLUMNS),
    " ON CONFLICT (hour, node, lease) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in LEDGER_COLUMNS[3:]),
)
LEDGER_RETENTION_SQL: Final = (
    "DELETE FROM usage_ledger WHERE (hour, node, lease) IN (SELECT hour, node, lease "
    "FROM usage_ledger WHERE hour < ? ORDER BY hour LIMIT ?)"
)


def dirty_hours() -> Query[list[tuple[int, int]]]:
    """The hours whose rollups moved since their ledger rows were written, with the count
    of batches that moved them (a recompute clears an hour only if it is unchanged)."""
    return single(
        "SELECT hour, n FROM ledger_dirty ORDER BY hour",
        (),
        lambda rows: [(int(r[0]), int(r[1])) for r in rows],
    )


def pool_of_nodes() -> Query[dict[str, str]]:
    """Node -> its pool now, for the nodes in one (the ledger's pool of an unleased node)."""
    return single("SELECT node, pool FROM pool_nodes", (), lambda rows: {r[0]: r[1] for r in rows})


def ledger_at() -> Query[float | None]:
    """When the ledger was last brought up to date (``None``: never)."""
    return single(
        "SELECT value FROM meta WHERE key = ?",
        (LEDGER_AT_KEY,),
        lambda rows: None if (v := first_value(rows)) is None else float(v),
    )


async def write_ledger(
    store: Store,
    hours: Sequence[int],
    rows: Sequence[LedgerRow],
    dirty: Sequence[tuple[int, int]],
    at: float,
) -> None:
    """Replace ``hours``' ledger rows by ``rows``; clear the ``dirty`` marks no batch moved
    since they were read; record ``at`` as the ledger's time. One transaction."""
    async with store.transaction(f"writing the usage ledger ({len(hours)} hours)"):
        for hour in hours:
            await store.execute("DELETE FROM usage_ledger WHERE hour = ?", (hour,))
        await store.insert_many(_INSERT, [(*r, at) for r in rows])
        for hour, n in dirty:
            await store.execute("DELETE FROM ledger_dirty WHERE hour = ? AND n = ?", (hour, n))
        await store.execute(
            "INSERT INTO meta (key, value, updated) VALUES (?, ?, ?) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (LEDGER_AT_KEY, repr(at), at),
        )


def tenant_used_hours(since: float, until: float) -> Query[dict[str, tuple[float, float]]]:
    """Tenant -> (utilisation-weighted, busy) GPU-hours its leases' nodes did in the ledger
    hours in [since, until)."""
    return single(
        "SELECT tenant, sum(used_gpu_h), sum(busy_gpu_h) FROM usage_ledger "
        "WHERE hour >= ? AND hour < ? AND tenant IS NOT NULL GROUP BY tenant",
        (math.floor(since), math.ceil(until)),
        lambda rows: {r[0]: (float(r[1] or 0.0), float(r[2] or 0.0)) for r in rows},
    )


_SUMS: Final = (
    "sum(allocated_gpu_h) AS allocated_gpu_hours, sum(busy_gpu_h) AS busy_gpu_hours, "
    "sum(used_gpu_h) AS used_gpu_hours, sum(reported_gpu_h) AS reported_gpu_hours, "
    "sum(gpu_kwh) AS gpu_kwh, sum(cpu_kwh) AS cpu_kwh, sum(node_kwh) AS node_kwh, "
    # A partly measured hour ('measured+model') counts as measured and as its fallback.
    "sum(CASE WHEN node_kwh_basis LIKE '%model' THEN 1 ELSE 0 END) AS model_rows, "
    "sum(CASE WHEN node_kwh_basis LIKE '%gpu+cpu' THEN 1 ELSE 0 END) AS parts_rows, "
    "sum(CASE WHEN node_kwh_basis LIKE 'measured%' THEN 1 ELSE 0 END) AS measured_rows, "
    "sum(held_h) AS held_node_hours"
)


def ledger_days(
    since: float,
    until: float,
    *,
    tenant: str | None = None,
    lease: str | None = None,
    pool: str | None = None,
) -> Query[list[dict[str, Any]]]:
    """Ledger sums per UTC day, tenant, lease and pool over the hours in [since, until)
    (``tenant``/``lease``/``pool``: only those rows); the caller folds days into weeks or
    months. Rows no lease held have ``tenant`` NULL and ``lease`` ''."""
    where = "hour >= ? AND hour < ?"
    params: list[Any] = [math.floor(since), math.ceil(until)]
    for col, value in (("tenant", tenant), ("lease", lease), ("pool", pool)):
        if value is not None:
            where += f" AND {col} = ?"
            params.append(value)
    return single(
        f"SELECT hour / 86400 AS day, tenant, lease, pool, {_SUMS} FROM usage_ledger "
        f"WHERE {where} GROUP BY hour / 86400, tenant, lease, pool ORDER BY 1",
        params,
        lambda rows: [dict(r) for r in rows],
    )
