"""The few writes a command makes to the collector's store: one statement, then closed.

Stdlib ``sqlite3`` (no event loop for one statement), a busy timeout, a transaction of a
millisecond, on rows the collector's writer does not write itself (a dead letter, a
silence), so it never holds the writer up and cannot race it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from collector.store.connect import open_sync
from shared.errors import StoreError

__all__ = ["execute_once"]


def execute_once(
    path: Path, sql: str, params: Sequence[object], *, no_table: str
) -> sqlite3.Cursor:
    """Run one statement on the store at ``path`` in its own transaction.

    ``no_table`` completes the error when the store predates the table (not yet migrated).
    """
    conn = open_sync(path, write=True)
    try:
        return conn.execute(sql, params)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise StoreError(f"{str(path)!r} {no_table}") from exc
        raise StoreError(f"cannot update {str(path)!r}: {exc}") from exc
    except (sqlite3.Error, OverflowError) as exc:
        raise StoreError(f"cannot update {str(path)!r}: {exc}") from exc
    finally:
        conn.close()
