"""Capacity snapshots: the writer's insert (with retention) and the commands' reads.

The collector's capacity job writes one row per cycle through the writer's :class:`Store`
(one transaction: insert, then delete what is older than the keep window); commands read
through a :class:`~collector.store.reader.StoreReader`. The inputs of ``collector capacity
--now`` (each node's newest sample, status and inventory) are read here too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.store.queries import latest_sample
from collector.store.reader import StoreReader
from shared.errors import StoreError

if TYPE_CHECKING:  # the writer's side; commands import only the read functions
    from collector.store.db import Store

__all__ = [
    "SnapshotRow",
    "known_nodes",
    "latest_node_rows",
    "latest_snapshot",
    "pool_members",
    "recent_snapshots",
    "snapshot_plan",
    "snapshot_series",
    "snapshot_span",
    "write_snapshot",
]

_NO_TABLE: Final = (
    "has no capacity snapshots yet: start this version's `collector run` with "
    "capacity.plan set (or use --now)"
)


class SnapshotRow(NamedTuple):
    """One row of ``capacity_snapshots``, in column order."""

    at: float
    cap_w: float
    it_w: float
    facility_w: float | None
    headroom_w: float
    worst_it_w: float
    nodes: int
    stale_nodes: int
    unmatched_nodes: int
    clamped_nodes: int
    binding: str | None
    detail: str


async def write_snapshot(store: Store, row: SnapshotRow, *, keep_s: float) -> int:
    """Insert ``row`` and delete snapshots older than ``keep_s`` before it; return deleted."""
    async with store.transaction("writing a capacity snapshot"):
        await store.execute(
            f"INSERT INTO capacity_snapshots ({', '.join(SnapshotRow._fields)}) "
            f"VALUES ({', '.join('?' * len(SnapshotRow._fields))})",
            row,
        )
        return await store.execute(
            "DELETE FROM capacity_snapshots WHERE at < ?", (row.at - keep_s,)
        )


async def recent_snapshots(
    store: Store, since: float
) -> tuple[list[tuple[float, float]], str | None]:
    """For a restarted collector: (time, IT draw) of the snapshots since ``since``, oldest
    first, and the newest snapshot's picture (JSON text; ``None`` when there is none)."""
    rows = await store.fetchall(
        "SELECT at, it_w FROM capacity_snapshots WHERE at >= ? ORDER BY at", (since,)
    )
    newest = await store.fetchall("SELECT detail FROM capacity_snapshots ORDER BY at DESC LIMIT 1")
    return [(r[0], r[1]) for r in rows], newest[0][0] if newest else None


async def known_nodes(store: Store) -> list[tuple[str, str | None, bytes | None]]:
    """Every node the store knows: (node, status, inventory JSON), for a restarted collector
    (the broker does not resend retained inventories on a resumed session)."""
    rows = await store.fetchall("SELECT node, status, inventory FROM nodes ORDER BY node")
    return [(r[0], r[1], None if r[2] is None else bytes(r[2])) for r in rows]


def _need_table(reader: StoreReader) -> None:
    if not reader.has_table("capacity_snapshots"):
        raise StoreError(f"{str(reader.path)!r} {_NO_TABLE}")


def latest_snapshot(reader: StoreReader) -> dict[str, Any] | None:
    """The newest snapshot's picture (JSON data), or ``None`` when there is none."""
    _need_table(reader)
    rows = reader.fetchall("SELECT detail FROM capacity_snapshots ORDER BY at DESC LIMIT 1")
    if not rows:
        return None
    data: dict[str, Any] = json.loads(rows[0]["detail"])
    return data


def snapshot_plan(reader: StoreReader) -> str | None:
    """The site plan the newest snapshot was computed with (the collector's
    ``capacity.plan``): what a command recomputing the picture uses when given none.
    ``None``: no snapshot yet, or a store from before the snapshots."""
    if not reader.has_table("capacity_snapshots"):
        return None
    data = latest_snapshot(reader)
    plan = data.get("plan") if data is not None else None
    return plan if isinstance(plan, str) and plan else None


def snapshot_span(reader: StoreReader) -> tuple[float, float] | None:
    """When the oldest and the newest snapshot were taken (``None``: there is none)."""
    _need_table(reader)
    rows = reader.fetchall("SELECT min(at) AS oldest, max(at) AS newest FROM capacity_snapshots")
    if not rows or rows[0]["oldest"] is None:
        return None
    return float(rows[0]["oldest"]), float(rows[0]["newest"])


def snapshot_series(reader: StoreReader, since: float) -> list[dict[str, Any]]:
    """Summary columns of every snapshot at or after ``since``, oldest first."""
    _need_table(reader)
    rows = reader.fetchall(
        "SELECT at, cap_w, it_w, facility_w, headroom_w, worst_it_w, nodes, stale_nodes, "
        "binding FROM capacity_snapshots WHERE at >= ? ORDER BY at",
        (since,),
    )
    return [dict(r) for r in rows]


def latest_node_rows(
    reader: StoreReader,
) -> Iterator[
    tuple[
        str,
        str | None,
        float | None,
        bytes | None,
        float | None,
        float | None,
        int | None,
        bytes | None,
    ]
]:
    """Per node: (node, status, status_ts, inventory JSON, inventory_ts, newest sample's
    received time, its payload dict id, its payload blob), through the ``(node, ts_ms)``
    index."""
    rows = reader.fetchall(
        "SELECT n.node, n.status, n.status_ts, n.inventory, n.inventory_ts, "
        "s.received_ms / 1000.0 AS received, "
        "s.payload_dict, s.payload FROM nodes n "
        f"{latest_sample(reader.dialect)} ORDER BY n.node"
    )
    for r in rows:
        yield (
            r["node"],
            r["status"],
            r["status_ts"],
            r["inventory"],
            r["inventory_ts"],
            r["received"],
            r["payload_dict"],
            r["payload"],
        )


def pool_members(reader: StoreReader, pool: str) -> frozenset[str]:
    """The nodes of pool ``pool`` (``pool_nodes``; ``free``: the nodes in no pool); empty
    when the pool has none."""
    if not reader.has_table("pool_nodes"):
        raise StoreError(
            f"{str(reader.path)!r} has no pools table: start this version's `collector run` "
            "once to migrate it"
        )
    if pool == "free":  # collector.store.pools.FREE: every node in no pool, as `pool list` says
        rows = reader.fetchall(
            "SELECT node FROM nodes WHERE node NOT IN (SELECT node FROM pool_nodes)"
        )
    else:
        rows = reader.fetchall("SELECT node FROM pool_nodes WHERE pool = ?", (pool,))
    return frozenset(r["node"] for r in rows)
