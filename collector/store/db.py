"""The rolling SQLite store.

One :class:`Store` owns one aiosqlite connection (WAL mode, so ``collector query`` can read
while the daemon writes). Only the collector's writer task calls the ``write_*`` methods;
readers open their own connection with :meth:`Store.open_readonly`.

Schema changes are ordered, named migrations recorded in ``schema_migrations``.

Tables:

``samples``
    one row per node sample: summary columns for fast queries plus the validated payload
    (``payload``, the JSON exactly as received) for per-GPU detail. ``(node, ts_ms)`` is
    unique, which is what makes QoS 1 redelivery harmless (``INSERT OR IGNORE``).
``nodes``
    one row per node: status from the status topic, latest sample summary, inventory.
``counters``
    the collector's counters (received, stored, duplicates, rejected by reason), flushed
    periodically so other processes can read them.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

import aiosqlite

from collector.store.codec import PayloadCodec
from shared.errors import StoreError
from shared.logging import get_logger

__all__ = [
    "MIGRATIONS",
    "NodeUpdate",
    "SampleRow",
    "Store",
]

log = get_logger("store")


class SampleRow(NamedTuple):
    """One row of ``samples``, in column order."""

    node: str
    ts_ms: int
    seq: int
    received_ms: int
    interval_s: float
    cpu_pct: float | None
    mem_used_bytes: int
    mem_total_bytes: int
    gpu_count: int
    gpu_util_pct: float | None
    gpu_mem_used_bytes: int | None
    gpu_power_w: float | None
    cpu_power_w: float | None
    payload: bytes


@dataclass(slots=True)
class NodeUpdate:
    """Status or inventory news about one node, merged into ``nodes`` by the writer.

    A node's latest sample is not copied here: queries find it through the
    ``(node, ts_ms)`` index, which also ignores late (buffered) samples by construction.
    """

    node: str
    status: str | None = None
    status_ts: float | None = None
    inventory: bytes | None = None
    inventory_ts: float | None = None


MIGRATIONS: Final[tuple[tuple[str, str], ...]] = (
    (
        "0001_initial",
        """
        CREATE TABLE samples (
            node TEXT NOT NULL,
            ts_ms INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            received_ms INTEGER NOT NULL,
            interval_s REAL NOT NULL,
            cpu_pct REAL,
            mem_used_bytes INTEGER NOT NULL,
            mem_total_bytes INTEGER NOT NULL,
            gpu_count INTEGER NOT NULL,
            gpu_util_pct REAL,
            gpu_mem_used_bytes INTEGER,
            gpu_power_w REAL,
            cpu_power_w REAL,
            payload BLOB NOT NULL,
            payload_dict INTEGER REFERENCES payload_dicts (id)  -- NULL: stored uncompressed
        );
        CREATE TABLE payload_dicts (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            dict BLOB NOT NULL
        );
        -- rowid grows with arrival, so retention deletes from the start of the table;
        -- this index both dedups redelivered samples and serves per-node queries.
        CREATE UNIQUE INDEX samples_node_ts ON samples (node, ts_ms);
        CREATE TABLE nodes (
            node TEXT PRIMARY KEY,
            status TEXT,
            status_ts REAL,
            inventory BLOB,
            inventory_ts REAL
        );
        CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL,
            updated REAL NOT NULL
        );
        """,
    ),
    (
        # Retention looks for old rows by time; without this index every pass ended with a
        # scan of the whole table (minutes at 200M rows), stalling the only writer.
        "0002_samples_ts_index",
        "CREATE INDEX samples_ts ON samples (ts_ms);",
    ),
    (
        # Retention deletes by arrival time: a node's clock decides nothing about how long
        # its rows stay (a sample stamped in the future would otherwise never expire).
        "0003_retention_by_arrival",
        """
        DROP INDEX samples_ts;
        CREATE INDEX samples_received ON samples (received_ms);
        """,
    ),
    (
        # Messages that were rejected or could not be stored: acknowledged (so the broker
        # stops redelivering them) and kept here, bounded, for `collector query --rejected`.
        "0004_quarantine",
        """
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            received_ms INTEGER NOT NULL,
            node TEXT,                    -- from the topic, when it names one
            topic TEXT NOT NULL,          -- at most 256 characters
            reason TEXT NOT NULL,         -- counter name without rejected_: invalid, clock_skew...
            detail TEXT NOT NULL,         -- at most 300 characters
            payload_head BLOB NOT NULL,   -- the first 256 bytes
            payload_bytes INTEGER NOT NULL
        );
        CREATE INDEX quarantine_node ON quarantine (node, id);
        """,
    ),
)

_SAMPLE_COLUMNS: Final = (
    "node, ts_ms, seq, received_ms, interval_s, cpu_pct, mem_used_bytes, mem_total_bytes, "
    "gpu_count, gpu_util_pct, gpu_mem_used_bytes, gpu_power_w, cpu_power_w, payload, payload_dict"
)
_INSERT_SAMPLES: Final = (f"INSERT OR IGNORE INTO samples ({_SAMPLE_COLUMNS})", 15, "")

_INSERT_NODE: Final = ("INSERT OR IGNORE INTO nodes (node)", 1, "")
_UPSERT_STATUS: Final = (
    "INSERT INTO nodes (node, status, status_ts)",
    3,
    " ON CONFLICT (node) DO UPDATE SET status = excluded.status, status_ts = excluded.status_ts",
)
_UPSERT_INVENTORY: Final = (
    "INSERT INTO nodes (node, inventory, inventory_ts)",
    3,
    " ON CONFLICT (node) DO UPDATE SET inventory = excluded.inventory,"
    " inventory_ts = excluded.inventory_ts",
)

# Many rows per statement, not executemany: sqlite3 releases the GIL around every step, and
# while the event loop is busy each re-acquisition waits a whole switch interval (5 ms), so
# executemany of 4,000 rows took seconds under load. Every statement is also one hop to
# aiosqlite's thread, so fewer is better: 2,000 rows x 15 columns = 30,000 bound variables,
# under the 32,766 that SQLite allows by default since 3.32.
_ROWS_PER_STATEMENT: Final = 2000


@functools.lru_cache(maxsize=64)
def _multi_row_sql(head: str, ncols: int, nrows: int, tail: str) -> str:
    one = "(" + ", ".join("?" * ncols) + ")"
    return f"{head} VALUES {', '.join([one] * nrows)}{tail}"


class Store:
    """Async context manager around the SQLite file.

    >>> async with Store(path) as store:
    ...     await store.write_samples(rows)
    """

    def __init__(self, path: Path, *, readonly: bool = False, compress: bool = True) -> None:
        self.path = path
        self.readonly = readonly
        self._conn: aiosqlite.Connection | None = None
        self.codec = PayloadCodec()
        self._compress = compress
        self._dict_id: int | None = None
        self._dicts: dict[int, bytes] = {}
        # Writer, retention and counters share the connection; each holds this for its whole
        # transaction so none commits another's half-written batch.
        self._write_lock = asyncio.Lock()

    @classmethod
    def open_readonly(cls, path: Path) -> Self:
        """A store for queries: fails clearly if the file does not exist, never writes."""
        return cls(path, readonly=True)

    @property
    def conn(self) -> aiosqlite.Connection:
        """The open connection."""
        if self._conn is None:
            raise StoreError("store is not open: use `async with Store(path)`")
        return self._conn

    async def __aenter__(self) -> Self:
        try:
            if self.readonly:
                if not self.path.is_file():
                    raise StoreError(
                        f"no capwatch database at {str(self.path)!r}: start `collector run` "
                        "first or pass --db / CAPWATCH_DB_PATH"
                    )
                uri = f"{self.path.resolve().as_uri()}?mode=ro"  # as_uri escapes ? and #
                self._conn = await aiosqlite.connect(uri, uri=True)
                await self._conn.execute("PRAGMA busy_timeout = 5000")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = await aiosqlite.connect(self.path)
                for pragma in (
                    "PRAGMA journal_mode = WAL",
                    # NORMAL in WAL mode: a power cut may lose the last commits, never corrupts.
                    "PRAGMA synchronous = NORMAL",
                    "PRAGMA busy_timeout = 5000",
                    "PRAGMA temp_store = MEMORY",
                    "PRAGMA cache_size = -65536",
                ):
                    await self._conn.execute(pragma)
                await self._migrate()
                if self._compress:
                    self._dict_id = await self._register_dict()
        except sqlite3.Error as exc:
            await self._close()
            raise StoreError(f"cannot open database {str(self.path)!r}: {exc}") from exc
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _migrate(self) -> None:
        conn = self.conn
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        async with conn.execute("SELECT name FROM schema_migrations") as cur:
            done = {row[0] async for row in cur}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            await conn.executescript(
                f"BEGIN;\n{sql}\nINSERT INTO schema_migrations VALUES ('{name}', {time.time()});"
                "\nCOMMIT;"
            )
            log.info("migration_applied", name=name, db=str(self.path))

    async def _register_dict(self) -> int:
        conn = self.conn
        await conn.execute(
            "INSERT OR IGNORE INTO payload_dicts (sha256, dict) VALUES (?, ?)",
            (self.codec.sha256, self.codec.dictionary),
        )
        await conn.commit()
        async with conn.execute(
            "SELECT id FROM payload_dicts WHERE sha256 = ?", (self.codec.sha256,)
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def migrations(self) -> list[str]:
        """Names of the applied migrations, in order."""
        return [
            row[0]
            for row in await self.fetchall("SELECT name FROM schema_migrations ORDER BY name")
        ]

    # -- writer side ---------------------------------------------------------------------

    async def write_batch(
        self,
        rows: Sequence[SampleRow],
        updates: Iterable[NodeUpdate] = (),
        new_nodes: Iterable[str] = (),
    ) -> int:
        """Insert sample rows (duplicates ignored), node news and nodes first seen, at once.

        One transaction; returns how many sample rows were new.
        """
        async with self._write_lock:
            return await self._write_batch_unlocked(rows, updates, new_nodes)

    async def _write_batch_unlocked(
        self,
        rows: Sequence[SampleRow],
        updates: Iterable[NodeUpdate] = (),
        new_nodes: Iterable[str] = (),
    ) -> int:
        """Insert sample rows (duplicates ignored), node news and nodes first seen, at once.

        Returns how many sample rows were new.
        """
        conn = self.conn
        dict_id = self._dict_id
        samples: list[tuple[Any, ...]]
        if dict_id is None:
            samples = [(*r[:-1], r.payload, None) for r in rows]
        else:
            # Off the event loop, in one GIL-free call for the whole batch.
            blobs = await asyncio.to_thread(self.codec.compress_batch, [r.payload for r in rows])
            samples = [(*r[:-1], b, dict_id) for r, b in zip(rows, blobs, strict=True)]
        statuses: list[tuple[Any, ...]] = []
        inventories: list[tuple[Any, ...]] = []
        for u in updates:
            if u.status is not None:
                statuses.append((u.node, u.status, u.status_ts))
            if u.inventory is not None:
                inventories.append((u.node, u.inventory, u.inventory_ts))
        try:
            inserted = await self._insert_many(_INSERT_SAMPLES, samples)
            await self._insert_many(_INSERT_NODE, [(n,) for n in new_nodes])
            await self._insert_many(_UPSERT_STATUS, statuses)
            await self._insert_many(_UPSERT_INVENTORY, inventories)
            await conn.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"writing {len(rows)} samples failed: {exc}") from exc
        return max(inserted, 0)

    async def _insert_many(
        self, statement: tuple[str, int, str], rows: Sequence[tuple[Any, ...]]
    ) -> int:
        """Run ``statement`` over ``rows``, many rows per statement; return rows changed."""
        head, ncols, tail = statement
        changed = 0
        for i in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[i : i + _ROWS_PER_STATEMENT]
            sql = _multi_row_sql(head, ncols, len(chunk), tail)
            cur = await self.conn.execute(sql, [v for row in chunk for v in row])
            changed += cur.rowcount
            await cur.close()
        return changed

    async def write_counters(self, counters: dict[str, int], now: float) -> None:
        """Replace the stored counters with the collector's current ones."""
        async with self._write_lock:
            await self._write_counters_unlocked(counters, now)

    async def _write_counters_unlocked(self, counters: dict[str, int], now: float) -> None:
        try:
            await self.conn.executemany(
                "INSERT INTO counters (name, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "updated = excluded.updated",
                [(k, v, now) for k, v in counters.items()],
            )
            await self.conn.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"writing counters failed: {exc}") from exc

    async def delete_older_than(self, cutoff_ms: int, chunk_rows: int) -> int:
        """Delete at most ``chunk_rows`` samples older than ``cutoff_ms``; return how many.

        Small chunks keep each write transaction short, so ingestion never stalls behind
        retention. The oldest samples go first, found through the ``ts_ms`` index.
        """
        async with self._write_lock:
            return await self._delete_older_than_unlocked(cutoff_ms, chunk_rows)

    async def _delete_older_than_unlocked(self, cutoff_ms: int, chunk_rows: int) -> int:
        try:
            cur = await self.conn.execute(
                "DELETE FROM samples WHERE rowid IN "
                "(SELECT rowid FROM samples WHERE received_ms < ? ORDER BY received_ms LIMIT ?)",
                (cutoff_ms, chunk_rows),
            )
            deleted = cur.rowcount
            await cur.close()
            await self.conn.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"retention delete failed: {exc}") from exc
        return max(deleted, 0)

    # -- reader side ---------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read query and return all rows (``sqlite3.Row``: by index or name)."""
        try:
            self.conn.row_factory = sqlite3.Row
            async with self.conn.execute(sql, params) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc
        return list(rows)

    async def payload(self, blob: bytes, dict_id: int | None) -> bytes:
        """The JSON payload of a stored row (decompressed with the row's dictionary)."""
        if dict_id is None:
            return blob
        dictionary = self._dicts.get(dict_id)
        if dictionary is None:
            rows = await self.fetchall("SELECT dict FROM payload_dicts WHERE id = ?", (dict_id,))
            if not rows:
                raise StoreError(f"payload dictionary {dict_id} is missing from the database")
            dictionary = self._dicts[dict_id] = bytes(rows[0]["dict"])
        return self.codec.decompress(blob, dictionary)

    async def counters(self) -> dict[str, int]:
        """The counters last flushed by the collector."""
        return {
            r["name"]: r["value"] for r in await self.fetchall("SELECT name, value FROM counters")
        }
