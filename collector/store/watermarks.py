"""The ``watermarks`` table: per node, what the store holds of its current agent epoch.

The collector's writer keeps each node's watermark in memory
(:class:`collector.ingest.watermark.Watermarks`), fed by the sample rows it has committed,
and writes the changed ones here in one transaction before it publishes them; at start it
reads them back (:func:`load_watermarks`), with the seqs already stored above a hole
(:func:`stored_above`), so a restarted collector goes on from the store's truth.

A row also names the node's newest sample by the agent's ``(epoch, seq)``: the one at
``top``, by its time ``top_ts_ms``, which the reads find through the samples' ``(node,
ts_ms)`` index (:func:`collector.store.queries.latest_sample`). Kept here, at most once per
node per watermark interval, rather than as an index on ``(node, epoch, seq)``, which every
stored sample would pay for.

Portable SQL: an upsert with ``ON CONFLICT ... DO UPDATE``, plain joins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.store.dialect import growing_side

if TYPE_CHECKING:
    from collector.store.writes import Writes

__all__ = [
    "STORED_ABOVE_SQL",
    "WATERMARK_UPSERT",
    "WatermarkRow",
    "load_watermarks",
    "stored_above",
    "write_watermarks",
]


class WatermarkRow(NamedTuple):
    """One row of ``watermarks``, in column order."""

    node: str
    epoch: int
    seq: int
    top: int
    ts_ms: int
    """The newest stored sample's time of ``epoch`` (node clock, ms)."""
    top_ts_ms: int | None = None
    """The time of the sample at ``top`` (node clock, ms): the node's newest sample by
    ``(epoch, seq)``, whatever its clock did (``None``: not known)."""
    seen_ts_ms: int | None = None
    """The newest time (node clock, ms) of any stored sample of the node the watermark has
    taken in, of every epoch: a sample stamped later came after this row."""


WATERMARK_UPSERT: Final = (
    "INSERT INTO watermarks (node, epoch, seq, top, ts_ms, top_ts_ms, seen_ts_ms)",
    7,
    " ON CONFLICT (node) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq,"
    " top = excluded.top, ts_ms = excluded.ts_ms, top_ts_ms = excluded.top_ts_ms,"
    " seen_ts_ms = excluded.seen_ts_ms",
)


async def write_watermarks(store: Writes, rows: Sequence[WatermarkRow]) -> None:
    """Upsert ``rows`` in one transaction of the writer's store."""
    if not rows:
        return
    values = [tuple(r) for r in rows]
    await store.transact(
        f"writing {len(rows)} watermarks", lambda tx: tx.insert_many(WATERMARK_UPSERT, values)
    )


async def load_watermarks(store: Writes) -> list[WatermarkRow]:
    """Every node's watermark as last written."""
    rows = await store.fetchall(
        "SELECT node, epoch, seq, top, ts_ms, top_ts_ms, seen_ts_ms FROM watermarks"
    )
    return [
        WatermarkRow(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), _int(r[5]), _int(r[6]))
        for r in rows
    ]


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _stored_above_sql(node: str) -> str:
    return (
        "SELECT s.node, s.seq FROM watermarks w JOIN samples s"
        f" ON s.node = {node} AND s.epoch = w.epoch AND s.seq > w.seq"
        " WHERE w.top > w.seq ORDER BY w.node, s.seq LIMIT ?"
    )


STORED_ABOVE_SQL: Final = {
    "sqlite": _stored_above_sql(growing_side("sqlite", "w.node")),
    "postgresql": _stored_above_sql(growing_side("postgresql", "w.node")),
}
""":func:`stored_above`'s statement per backend: ``w.node`` compared in ``samples.node``'s
collation (:func:`~collector.store.dialect.growing_side`), else no index serves the join and
a collector's start read every stored sample; ordered by ``w.node`` (``C`` on PostgreSQL,
:data:`~collector.store.migrations.BYTES_ORDER`), as bytes on both backends, so that the
first ``limit`` rows are the same rows on both (``s.node`` keeps the database's collation:
``a-node`` came before ``B-node`` on an en-US one, after it on SQLite)."""


async def stored_above(store: Writes, limit: int) -> list[tuple[str, int]]:
    """``(node, seq)`` of the samples stored above a hole: of each node's watermark epoch,
    above its ``seq`` (only nodes whose ``top`` says there are any), ordered; at most
    ``limit`` rows."""
    rows = await store.transact(
        "reading the samples above the watermarks' holes",
        lambda tx: tx.fetchall(STORED_ABOVE_SQL[tx.dialect], (limit,)),
    )
    return [(str(r[0]), int(r[1])) for r in rows]
