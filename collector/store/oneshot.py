"""The few writes a command makes to the collector's store: one statement, then closed.

Stdlib ``sqlite3`` (no event loop for one statement), a busy timeout, a transaction of a
millisecond, on rows the collector's writer does not write itself (a dead letter, a
silence), so it never holds the writer up and cannot race it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from shared.errors import StoreError

__all__ = ["connect_store", "execute_once"]

_BUSY_TIMEOUT_S: Final = 5.0


def connect_store(path: Path) -> sqlite3.Connection:
    """A read-write connection (autocommit, a busy timeout) to the existing store at ``path``;
    :class:`StoreError` with the fix when there is none or it cannot be opened."""
    if not path.is_file():
        raise StoreError(
            f"no capwatch database at {str(path)!r}: start `collector run` first or pass "
            "--db / CAPWATCH_DB_PATH"
        )
    try:
        return sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {str(path)!r}: {exc}") from exc


def execute_once(
    path: Path, sql: str, params: Sequence[object], *, no_table: str
) -> sqlite3.Cursor:
    """Run one statement on the store at ``path`` in its own transaction.

    ``no_table`` completes the error when the store predates the table (not yet migrated).
    """
    conn = connect_store(path)
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
