"""``collector migrate``: copy a SQLite store, table by table, into a PostgreSQL store.

The source is read in one snapshot (one read transaction) in batches of :data:`BATCH_ROWS`;
each batch goes into the target in one transaction through the collector's own
:class:`~collector.store.db.Store` (samples by the sample path: the day partitions they
need, then COPY; the other tables by multi-row inserts). Ids are kept, so every reference
(a sample's payload dictionary and template, a lease's nodes, the outbox ids a dead letter
is redelivered by) holds; the target's identity sequences then continue after them. The
target is created and migrated by the same migrations as ``collector run`` (a capwatch
store gets only those it lacks). One that holds any row is refused unless ``force`` (then it
is emptied first), but for the rows a collector writes by itself as it starts
(:data:`STARTUP_TABLES`): a database ``collector run`` was pointed at first is copied into,
those rows replaced by the source's, unless a collector still leads on it or any capwatch
connection (a collector whose election lives elsewhere, a standby, a command) is still on it.

Samples go in as stored (compressed payloads, their dictionary ids and the template ids they
start with), not re-encoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from collector.paths import PgTarget
from collector.store.connect import SqliteSync, is_capwatch, open_sync
from collector.store.db import Store
from collector.store.migrations import MIGRATIONS, refuse_newer
from collector.store.pgconn import APPLICATION_NAME
from shared.errors import ConfigError, StoreError

__all__ = ["BATCH_ROWS", "STARTUP_TABLES", "TABLES", "CopyReport", "copy_store"]

TABLES: Final = (
    "payload_dicts",
    "payload_templates",
    "samples",
    "nodes",
    "counters",
    "quarantine",
    "node_rejects",
    "meta",
    "alerts",
    "alert_history",
    "outbox",
    "alert_groups",
    "silences",
    "pools",
    "pool_nodes",
    "declared_inventories",
    "pool_moves",
    "capacity_snapshots",
    "cohorts",
    "cohort_quotas",
    "tenants",
    "quotas",
    "leases",
    "lease_nodes",
    "lease_moves",
    "rollups",
    "rollup_stage",
    "rollup_owners",
    "ledger_dirty",
    "usage_ledger",
    "usage_daily",
    "watermarks",
    "polled_power",
    "forgotten_nodes",
)
"""Every table of the schema, referenced tables before those that refer to them (a table a
new migration adds goes here too: the migrate test compares this with the schema). The
rollups and the usage ledger are the history the raw samples no longer hold; the staged
samples are folded by the target's first collector; the watermarks let it go on from what
the agents were last told."""

STARTUP_TABLES: Final = ("payload_dicts", "nodes", "counters", "meta", "rollup_owners")
"""What a collector writes before any agent's sample: the built-in payload dictionary, the
nodes named by the broker's retained inventories and statuses (each agent sends them again
on every connect), its counters, its broker session and subscriptions (``meta``), its fold
ownership. A target holding rows only here is a store a collector was started on, not data
the copy would destroy."""

_IDENTITY: Final = (
    "payload_dicts",
    "payload_templates",
    "quarantine",
    "alert_history",
    "outbox",
    "silences",
    "pool_moves",
    "leases",
    "lease_moves",
    "forgotten_nodes",
)
"""Tables whose ``id`` the store numbers (PostgreSQL: an identity column)."""

BATCH_ROWS: Final = 5_000

_OTHER_SESSIONS_SQL: Final = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    f"AND application_name = '{APPLICATION_NAME}' AND pid <> pg_backend_pid()"
)
"""The other capwatch connections to the target (pg_stat_activity shows a session's
database and application name to every role: https://www.postgresql.org/docs/current/
monitoring-stats.html#MONITORING-PG-STAT-ACTIVITY-VIEW); the copy's store has one."""


@dataclass(slots=True)
class CopyReport:
    """What was copied: rows per table, in :data:`TABLES` order, and how long it took."""

    source: str
    target: str
    tables: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "from": self.source,
            "to": self.target,
            "tables": dict(self.tables),
            "rows": sum(self.tables.values()),
            "seconds": round(self.seconds, 2),
        }


def _source(path: Path) -> SqliteSync:
    conn = open_sync(path, write=False)
    assert isinstance(conn, SqliteSync)
    try:
        conn.begin(write=False)  # one snapshot: a running collector may keep writing
        capwatch = is_capwatch(conn)
    except conn.errors:  # not even SQLite's
        capwatch = False
    if not capwatch:
        conn.close()
        raise StoreError(f"{str(path)!r} is not a capwatch database")
    done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
    try:
        # Copied by this version's tables and columns, a newer store's would be lost.
        refuse_newer(path, done)
    except StoreError:
        conn.close()
        raise
    missing = [name for name, _ in MIGRATIONS if name not in done]
    if missing:
        conn.close()
        raise StoreError(
            f"{str(path)!r} is not migrated to this version ({missing[0]} missing): start this "
            "version's `collector run` on it once, then migrate"
        )
    return conn


async def copy_store(
    source: Path,
    target: PgTarget,
    *,
    force: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[str, int], None] | None = None,
) -> CopyReport:
    """Copy every table of the SQLite store ``source`` into ``target``; see the module
    docstring. ``progress(table, rows so far)`` after each batch."""
    if not isinstance(source, Path) or not isinstance(target, PgTarget):
        raise ConfigError(
            "collector migrate copies a SQLite file (--from) into PostgreSQL (--to "
            "postgresql://...)",
            field="--to",
        )
    started = time.monotonic()
    report = CopyReport(str(source), str(target))
    reader = _source(source)
    try:
        async with Store(target, compress=False) as store:
            await _empty_target(store, target, force=force)
            for table in TABLES:
                report.tables[table] = await _copy_table(reader, store, table, batch_rows, progress)
            await store.continue_identities(_IDENTITY)
    finally:
        reader.close()
    report.seconds = time.monotonic() - started
    return report


async def _empty_target(store: Store, target: PgTarget, *, force: bool) -> None:
    held = [t for t in TABLES if await store.fetchall(f"SELECT 1 FROM {t} LIMIT 1")]
    if not held:
        return
    data = [t for t in held if t not in STARTUP_TABLES]
    if data and not force:
        raise ConfigError(
            f"{str(target)!r} is not empty ({', '.join(data)} hold rows): migrate into an "
            "empty database, or pass --force to empty it first (its rows are lost)",
            field="--to",
        )
    leader = await store.fetchall(
        "SELECT holder FROM capwatch_leader WHERE expires_at > now() ORDER BY name LIMIT 1"
    )
    if leader and not force:
        raise ConfigError(
            f"{str(target)!r} has a running collector ({leader[0][0]!r} leads on it): stop "
            "it, then migrate (or pass --force to empty the database under it)",
            field="--to",
        )
    # The lease above is in the target only when the collectors elect there: one electing
    # through a database of its own ([election] url), or a standby, leaves none. Every
    # capwatch connection names itself (collector.store.pgconn.connect): any but this
    # copy's own is a collector or a command still on the target.
    others = await store.fetchall(_OTHER_SESSIONS_SQL)
    if others and others[0][0] and not force:
        raise ConfigError(
            f"{str(target)!r} is in use: a collector or a command is connected to it "
            f"({others[0][0]} connection(s) named {APPLICATION_NAME!r} in pg_stat_activity): "
            "stop it, then migrate (or pass --force to empty the database under it)",
            field="--to",
        )
    async with store.transaction("emptying the target"):
        await store.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")


async def _copy_table(
    reader: SqliteSync,
    store: Store,
    table: str,
    batch_rows: int,
    progress: Callable[[str, int], None] | None,
) -> int:
    columns = [
        r[1] for r in reader.raw.execute(f"SELECT cid, name FROM pragma_table_info('{table}')")
    ]
    wanted = store.sample_columns() if table == "samples" else None
    if wanted is not None:
        columns = [c for c in wanted if c in columns]
    cursor = reader.raw.execute(f"SELECT {', '.join(columns)} FROM {table}")
    copied = 0
    while True:
        batch: Sequence[tuple[Any, ...]] = [tuple(r) for r in cursor.fetchmany(batch_rows)]
        if not batch:
            return copied
        copied += await store.import_rows(table, columns, batch)
        if progress is not None:
            progress(table, copied)
