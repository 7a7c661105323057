"""Store facts the collector's /metrics shows: how big the database is, how old its oldest row.

SQL lives in the store package; this is the one question the metrics ask of the database.
"""

from __future__ import annotations

from collector.store.db import Store

__all__ = ["oldest_sample_received", "store_size_bytes"]


async def oldest_sample_received(store: Store) -> float | None:
    """Arrival time (Unix seconds) of the oldest stored sample; ``None`` when there is none.

    Served by the ``samples_received`` index: one descent, whatever the table holds.
    """
    rows = await store.fetchall("SELECT min(received_ms) FROM samples")
    value = rows[0][0] if rows else None
    return None if value is None else value / 1000.0


async def store_size_bytes(store: Store) -> int:
    """Bytes the store takes on disk: a SQLite file and its write-ahead log (absent: 0), or
    a PostgreSQL database (``pg_database_size``)."""
    return await store.size_bytes()
