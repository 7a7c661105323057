"""The outbox cleanup every alert write runs, on both backends: it deletes the
notifications delivered or dead before the history's keep, and finds them by ``done_at``
(the ``outbox_done`` index), not by reading the whole outbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from collector.paths import PgTarget, StoreTarget
from collector.store.alerts import (
    OUTBOX_PRUNE_SQL,
    OutboxNew,
    OutboxOutcome,
    write_alerts,
    write_outbox,
)
from collector.store.db import Store
from collector.store.dialect import pg_sql
from tests.helpers import db_rows

_NOW = 1.8e9
_KEEP_S = 3600.0


def _plan(target: StoreTarget) -> str:
    """The cleanup's plan, as the backend would run it (PostgreSQL: an index it can use
    is used, whatever the table's size; a seq scan only where none can serve)."""
    if isinstance(target, Path):
        conn = sqlite3.connect(target)
        try:
            rows = conn.execute(f"EXPLAIN QUERY PLAN {OUTBOX_PRUNE_SQL}", (0.0,)).fetchall()
        finally:
            conn.close()
        return "\n".join(str(r[-1]) for r in rows)
    assert isinstance(target, PgTarget)
    with psycopg.connect(target.url, autocommit=True) as pg:
        pg.execute("SET enable_seqscan = off")
        rows = pg.execute(f"EXPLAIN {pg_sql(OUTBOX_PRUNE_SQL)}", (0.0,)).fetchall()
    return "\n".join(str(r[0]) for r in rows)


async def test_outbox_cleanup_deletes_only_what_was_done_before_the_keep_by_index(
    store_url: StoreTarget,
) -> None:
    """Of six notifications (delivered and dead, long ago and recently; pending, old and
    new), an alert write deletes the two done before the keep; the cleanup's plan searches
    ``outbox_done`` for them."""
    old, recent = _NOW - 2 * _KEEP_S, _NOW - 60
    notes = [
        OutboxNew(f"u{i}", "hook", f"fp{i}", "r", "firing", "{}", old, old + 10 * _KEEP_S)
        for i in range(6)
    ]
    done = [("delivered", old), ("dead", old), ("delivered", recent), ("dead", recent)]
    async with Store(store_url) as store:
        entries = await write_alerts(store, [], _KEEP_S, notes, now=old)
        await write_outbox(
            store,
            [
                OutboxOutcome(e.id, state, 1, e.next_at, 200, None, None, at)  # type: ignore[arg-type]
                for e, (state, at) in zip(entries, done, strict=False)
            ],
        )
        await write_alerts(store, [], _KEEP_S, now=_NOW)
    left = db_rows(store_url, "SELECT uuid, state FROM outbox ORDER BY uuid")
    assert left == [("u2", "delivered"), ("u3", "dead"), ("u4", "pending"), ("u5", "pending")]
    assert "outbox_done" in _plan(store_url)
