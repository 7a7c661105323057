"""Store facts the collector's /metrics shows: how big the database is, how old its oldest row.

SQL lives in the store package; this is the one question the metrics ask of the database.
"""

from __future__ import annotations

from pathlib import Path

from collector.store.db import Store

__all__ = ["oldest_sample_received", "store_size_bytes"]


async def oldest_sample_received(store: Store) -> float | None:
    """Arrival time (Unix seconds) of the oldest stored sample; ``None`` when there is none.

    Served by the ``samples_received`` index: one descent, whatever the table holds.
    """
    rows = await store.fetchall("SELECT min(received_ms) FROM samples")
    value = rows[0][0] if rows else None
    return None if value is None else value / 1000.0


def store_size_bytes(db: Path) -> int:
    """Bytes the database takes on disk: the file and its write-ahead log (absent: 0)."""
    total = 0
    for path in (db, db.with_name(db.name + "-wal")):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total
