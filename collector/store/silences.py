"""``collector silence add|expire``: the command's writes to the collector's store.

As ``--redeliver`` does (:mod:`collector.store.outbox`): one short statement in its own
transaction, stdlib ``sqlite3`` with a busy timeout, on a table the collector only reads
(it re-reads the silences in force at every evaluation), so it never holds up the writer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from shared.errors import ConfigError, StoreError

__all__ = ["add_silence", "expire_silence"]

_BUSY_TIMEOUT_S: Final = 5.0


def _execute(path: Path, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
    if not path.is_file():
        raise StoreError(
            f"no capwatch database at {str(path)!r}: start `collector run` first or pass "
            "--db / CAPWATCH_DB_PATH"
        )
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {str(path)!r}: {exc}") from exc
    try:
        return conn.execute(sql, params)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise StoreError(
                f"{str(path)!r} has no silences table yet: start this version's "
                "`collector run` once to migrate it"
            ) from exc
        raise StoreError(f"cannot update {str(path)!r}: {exc}") from exc
    except (sqlite3.Error, OverflowError) as exc:
        raise StoreError(f"cannot update {str(path)!r}: {exc}") from exc
    finally:
        conn.close()


def add_silence(
    path: Path,
    matchers: Sequence[str],
    starts_at: float,
    ends_at: float,
    *,
    comment: str,
    author: str,
) -> int:
    """Store a silence (matchers already checked); return its id."""
    cur = _execute(
        path,
        "INSERT INTO silences (matchers, starts_at, ends_at, comment, author, created) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            json.dumps(list(matchers), ensure_ascii=False),
            starts_at,
            ends_at,
            comment,
            author,
            starts_at,
        ),
    )
    return int(cur.lastrowid or 0)


def expire_silence(path: Path, silence_id: int, now: float) -> None:
    """End silence ``silence_id`` now; :class:`ConfigError` if no such silence is in force."""
    cur = _execute(
        path, "UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?", (now, silence_id, now)
    )
    if cur.rowcount != 1:
        raise ConfigError(
            f"no silence in force with id {silence_id}: pick one from `collector silence list`",
            field="expire",
        )
