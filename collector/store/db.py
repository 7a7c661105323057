"""The rolling SQLite store: one connection, its pragmas and migrations, and its writes.

One :class:`Store` owns one aiosqlite connection (WAL mode, so ``collector query`` can read
while the daemon writes). Only the collector's writer task calls the ``write_*`` methods, so
there is no lock: one owner, one transaction at a time. Readers open their own connection
with :meth:`Store.open_readonly`. The schema is in :mod:`collector.store.migrations`.

Durability: ``synchronous = FULL`` by default, so a committed batch survives a power cut or
an OS crash, not only a process crash: the collector acknowledges samples to the broker
after the commit, and the broker forgets what it has been told is stored.

A failed write is rolled back and raised as :class:`StoreError` whose ``fatal`` says whether
the store itself is unusable (disk full, I/O error, read-only, corrupt, locked) or only this
batch could not be written (a value SQLite refuses): the writer bisects the latter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, Self, TypeVar

import aiosqlite
import numpy as np
import numpy.typing as npt

from collector.store.codec import PayloadCodec
from collector.store.connect import Synchronous, open_async, open_failed
from collector.store.ledger import DAILY_RETENTION_SQL, LEDGER_RETENTION_SQL
from collector.store.migrations import MIGRATIONS
from collector.store.partials import Staged, buckets, concat, merge, stage
from collector.store.query import Query
from collector.store.rollups import (
    CLEAR_STAGE_SQL,
    HOUR,
    MARK_HOURS_SQL,
    RETENTION_SQL,
    STAGE_SQL,
    STAGED_SQL,
    UPSERT_SQL,
    RollupConfig,
    stored_sql,
)
from shared.errors import StoreError
from shared.logging import get_logger

__all__ = [
    "MIGRATIONS",
    "NodeUpdate",
    "QuarantineRow",
    "SampleRow",
    "Store",
    "Synchronous",
    "sqlite_variable_limit",
]

log = get_logger("store")

T = TypeVar("T")


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
    epoch: int | None = None
    """The agent's boot counter (``Sample.epoch``); ``None`` from agents before it."""
    node_power_w: float | None = None
    """The node's input power (``Sample.node_power_w``, from its BMC or PSUs)."""
    node_power_source: str | None = None
    gpu_stats: bytes = b""
    """The GPUs as the rollups read them (:func:`collector.store.rollups.pack_gpus`); not a
    column of ``samples``."""


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


class QuarantineRow(NamedTuple):
    """One row of ``quarantine``: a message that was rejected or could not be stored."""

    received_ms: int
    node: str | None
    topic: str
    reason: str
    detail: str
    payload_head: bytes
    payload_bytes: int


_SAMPLE_COLUMNS: Final = (
    "node, ts_ms, seq, received_ms, interval_s, cpu_pct, mem_used_bytes, mem_total_bytes, "
    "gpu_count, gpu_util_pct, gpu_mem_used_bytes, gpu_power_w, cpu_power_w, payload, payload_dict, "
    "epoch, node_power_w, node_power_source"
)
_INSERT_SAMPLES: Final = (
    f"INSERT INTO samples ({_SAMPLE_COLUMNS})",
    18,
    " ON CONFLICT (node, ts_ms) DO NOTHING",
)
_SUMMARY: Final = 13
"""SampleRow's columns before the payload."""
_RETURNING: Final = sqlite3.sqlite_version_info >= (3, 35, 0)
"""``RETURNING`` (SQLite 3.35, 2021): the insert itself says which samples were new."""

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
_INSERT_QUARANTINE: Final = (
    "INSERT INTO quarantine "
    "(received_ms, node, topic, reason, detail, payload_head, payload_bytes)",
    7,
    "",
)
_UPSERT_META: Final = (
    "INSERT INTO meta (key, value, updated)",
    3,
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
)

# Many rows per statement, not executemany: sqlite3 releases the GIL around every step, and
# while the event loop is busy each re-acquisition waits a whole switch interval (5 ms), so
# executemany of 4,000 rows took seconds under load. Every statement is also one hop to
# aiosqlite's thread, so fewer is better; but never more bound variables than the library
# allows (999 before SQLite 3.32, e.g. Ubuntu 20.04 and RHEL 8; 32,766 since).
_MAX_ROWS_PER_STATEMENT: Final = 2000

# Primary result codes after which the store cannot take any write: stop, do not bisect.
_FATAL_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_AUTH,
    }
)


@functools.lru_cache(maxsize=256)
def _multi_row_sql(head: str, ncols: int, nrows: int, tail: str) -> str:
    one = "(" + ", ".join("?" * ncols) + ")"
    return f"{head} VALUES {', '.join([one] * nrows)}{tail}"


def sqlite_variable_limit() -> int:
    """The most bound variables one statement may have with this process's SQLite library."""
    conn = sqlite3.connect(":memory:")
    try:
        return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        conn.close()


def _hint(exc: BaseException) -> str:
    """What an operator can do about a failed write, where we can tell."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return ""
    primary = code & 0xFF
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return (
            " (another process held a write transaction on the database for more than 5 s, "
            "e.g. a VACUUM or an open sqlite3 shell: end it, then start the collector again)"
        )
    if primary == sqlite3.SQLITE_FULL:
        return " (free space on that filesystem, then start the collector again)"
    if primary == sqlite3.SQLITE_READONLY:
        return " (the file or its filesystem became read-only)"
    return ""


class _FileGoneError(Exception):
    """The database file is not the one this store opened: nothing more may be written."""


def _is_fatal(exc: BaseException) -> bool:
    if isinstance(exc, _FileGoneError):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        # No code: the connection itself is gone (closed, thread died).
        return code is None or (code & 0xFF) in _FATAL_CODES
    return isinstance(exc, MemoryError)


def _connection_factory(limit: int | None) -> type[sqlite3.Connection]:
    """A connection class that lowers the variable limit (a test stands in for old SQLite)."""
    if limit is None:
        return sqlite3.Connection
    lowered: int = limit

    class _Limited(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, lowered)

    return _Limited


class Store:
    """Async context manager around the SQLite file.

    >>> async with Store(path) as store:
    ...     await store.write_batch(rows)

    ``variable_limit`` lowers SQLite's bound-variable limit on this connection (as an old
    library would have it); statements are then cut to fit.
    """

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        compress: bool = True,
        synchronous: Synchronous = "full",
        variable_limit: int | None = None,
        rollups: RollupConfig | None = None,
    ) -> None:
        self.path = path
        self.rollups = rollups
        """How :meth:`write_batch` rolls new samples up (``None``: it does not)."""
        self.pending_rollups = 0
        """Samples staged for the rollups and not folded yet."""
        self._staged: list[Staged] = []
        """Those samples, as the batches staged them (and as a crash left them)."""
        self.readonly = readonly
        self.synchronous: Synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        self.codec = PayloadCodec()
        self._compress = compress
        self._dict_id: int | None = None
        self._limit_override = variable_limit
        self._identity: tuple[int, int] | None = None
        """(device, inode) of the file when it was opened: a write checks it is still there."""
        self.max_variables = min(sqlite_variable_limit(), variable_limit or 1 << 30)

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
        self._conn = await open_async(
            self.path,
            write=not self.readonly,
            synchronous=self.synchronous,
            factory=_connection_factory(self._limit_override),
        )
        if self.readonly:
            return self
        try:
            await self._migrate()
            if self._compress:
                self._dict_id = await self._register_dict()
            if self.rollups is not None:
                await self._read_staged()
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
        except (sqlite3.Error, OSError) as exc:
            await self._close()
            raise open_failed(self.path, exc, creating=True) from exc
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
        quarantine: Sequence[QuarantineRow] = (),
        meta: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Write sample rows (duplicates ignored), node news, nodes first seen, quarantined
        messages and meta facts in one transaction; return how many sample rows were new.

        On any failure the transaction is rolled back and :class:`StoreError` raised, with
        ``fatal`` telling a broken store from a batch SQLite refused.
        """
        dict_id = self._dict_id
        statuses: list[tuple[Any, ...]] = []
        inventories: list[tuple[Any, ...]] = []
        for u in updates:
            if u.status is not None:
                statuses.append((u.node, u.status, u.status_ts))
            if u.inventory is not None:
                inventories.append((u.node, u.inventory, u.inventory_ts))
        now = time.time()
        async with self.transaction(f"storing a batch ({len(rows)} sample rows)"):
            samples: list[tuple[Any, ...]]
            if dict_id is None or not rows:
                samples = [
                    (*r[:_SUMMARY], r.payload, None, r.epoch, r.node_power_w, r.node_power_source)
                    for r in rows
                ]
            else:
                # Off the event loop, in one GIL-free call for the whole batch.
                payloads = [r.payload for r in rows]
                blobs = await asyncio.to_thread(self.codec.compress_batch, payloads)
                samples = [
                    (*r[:_SUMMARY], b, dict_id, r.epoch, r.node_power_w, r.node_power_source)
                    for r, b in zip(rows, blobs, strict=True)
                ]
            rollups = self.rollups
            staged: Staged | None = None
            if rollups is None or not rollups.enabled or not rows:
                inserted = await self.insert_many(_INSERT_SAMPLES, samples)
            else:
                new = await self._insert_samples_new(rows, samples)
                inserted = len(new)
                if new:
                    staged = stage(new, rollups.busy_util_pct)
                    await self.insert_many(STAGE_SQL, [(staged.encode(),)])
            await self.insert_many(_INSERT_NODE, [(n,) for n in new_nodes])
            await self.insert_many(_UPSERT_STATUS, statuses)
            await self.insert_many(_UPSERT_INVENTORY, inventories)
            await self.insert_many(_INSERT_QUARANTINE, list(quarantine))
            await self.insert_many(_UPSERT_META, [(k, v, now) for k, v in meta])
        if staged is not None:  # committed: the fold may count them
            self._staged.append(staged)
            self.pending_rollups += len(staged)
        return max(inserted, 0)

    async def _insert_samples_new(
        self, rows: Sequence[SampleRow], samples: list[tuple[Any, ...]]
    ) -> list[SampleRow]:
        """Insert ``samples`` (``rows`` stored); return the rows that were new, not duplicates
        of a stored ``(node, ts_ms)``."""
        # Usually none is a duplicate: insert plainly (RETURNING costs ~4 us a sample) and
        # count. Only when some were, undo that and ask which (duplicates come with
        # redeliveries after a reconnect: rare).
        if not self.conn.in_transaction:
            await self.execute("BEGIN")  # the savepoint's RELEASE must not commit
        await self.execute("SAVEPOINT new_samples")
        if await self.insert_many(_INSERT_SAMPLES, samples) == len(rows):
            await self.execute("RELEASE SAVEPOINT new_samples")
            return list(rows)
        await self.execute("ROLLBACK TO SAVEPOINT new_samples")
        await self.execute("RELEASE SAVEPOINT new_samples")
        by_key = {(r.node, r.ts_ms): r for r in rows}
        if _RETURNING:
            head, ncols, tail = _INSERT_SAMPLES
            returning = (head, ncols, tail + " RETURNING node, ts_ms")
            keys: list[Any] = await self.insert_many_returning(returning, samples)
        else:  # an older SQLite: ask which keys exist, then insert
            present: set[tuple[str, int]] = set()
            for i in range(0, len(rows), 400):
                chunk = rows[i : i + 400]
                found = await self.fetchall(
                    "SELECT node, ts_ms FROM samples WHERE "
                    + " OR ".join(["(node = ? AND ts_ms = ?)"] * len(chunk)),
                    [v for r in chunk for v in (r.node, r.ts_ms)],
                )
                present.update((f[0], f[1]) for f in found)
            await self.insert_many(_INSERT_SAMPLES, samples)
            keys = [k for k in by_key if k not in present]
        return [by_key[(k[0], k[1])] for k in keys]

    async def _read_staged(self) -> None:
        """Take back the samples staged and not folded when the last store stopped."""
        for (body,) in await self.fetchall(STAGED_SQL):
            try:
                self._staged.append(Staged.decode(body))
            except ValueError as exc:  # not this version's: those samples stay unrolled
                log.error("rollup_stage_unreadable", error=str(exc))
        self.pending_rollups = sum(map(len, self._staged))
        if self._staged:
            log.info("rollup_stage_restored", samples=self.pending_rollups)

    async def fold_rollups(self) -> int:
        """Fold the staged samples into the rollups, in one transaction; return how many
        samples were staged (left by a crash, too). See :mod:`collector.store.rollups`."""
        staged = list(self._staged)
        if not staged:
            return 0
        new = await asyncio.to_thread(lambda: buckets(concat(staged)))
        async with self.transaction("folding rollups"):
            keys = [(new.names[k[0]], k[1], k[2]) for k in new.keys.tolist()]
            stored: list[Any] = []
            per = max(1, min(_MAX_ROWS_PER_STATEMENT, self.max_variables // 3))
            for i in range(0, len(keys), per):
                chunk = keys[i : i + per]
                async with self.conn.execute(
                    stored_sql(len(chunk)), [v for k in chunk for v in k]
                ) as cur:
                    cur.row_factory = None  # tuples: a third of the cost of sqlite3.Row
                    stored += await cur.fetchall()
            rows = await asyncio.to_thread(lambda: merge(new, stored).rows())
            await self.insert_array(UPSERT_SQL, rows)
            hours = sorted({k[2] for k in keys if k[1] == HOUR})
            await self.insert_many(MARK_HOURS_SQL, [(h, 1) for h in hours])
            await self.execute(CLEAR_STAGE_SQL)
        del self._staged[: len(staged)]
        folded = sum(map(len, staged))
        self.pending_rollups -= folded
        return folded

    @contextlib.asynccontextmanager
    async def transaction(self, what: str) -> AsyncIterator[None]:
        """One write transaction (the writer's; ``what`` names it in the error): commit, once
        the file is known to still be ours; on any failure roll back and raise
        :class:`StoreError` saying whether the store is usable. The table modules beside this
        one (alerts, capacity snapshots) write inside it with :meth:`execute`,
        :meth:`executemany` and :meth:`insert_many`."""
        try:
            yield
            self._check_file()
            await self.conn.commit()
        except Exception as exc:
            raise await self._failed(what, exc) from exc

    def _check_file(self) -> None:
        """Raise a fatal error if the database file was deleted or replaced since it opened.

        SQLite would go on committing into the unlinked file, and the collector would
        acknowledge samples that no one can ever read.
        """
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise _FileGoneError(f"the database file is gone ({exc.strerror})") from exc
        if (st.st_dev, st.st_ino) != self._identity:
            raise _FileGoneError("the database file was replaced by another file")

    async def _failed(self, what: str, exc: Exception) -> StoreError:
        """Roll back after ``exc`` and say whether the store is still usable."""
        fatal = _is_fatal(exc)
        try:
            await self.conn.rollback()
        except (sqlite3.Error, ValueError, StoreError):
            fatal = True  # cannot even roll back: nothing more can be written
        detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, sqlite3.Error) else str(exc)
        return StoreError(
            f"{what} failed in {str(self.path)!r}: {detail}{_hint(exc)}", fatal=fatal, exit_code=1
        )

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement inside :meth:`transaction`; return how many rows it changed."""
        cur = await self.conn.execute(sql, params)
        changed = cur.rowcount
        await cur.close()
        return max(changed, 0)

    async def execute_returning(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one ``... RETURNING`` statement inside :meth:`transaction`; return its rows."""
        async with self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement over ``rows`` inside :meth:`transaction`."""
        await self.conn.executemany(sql, rows)

    async def insert_many(
        self, statement: tuple[str, int, str], rows: Sequence[tuple[Any, ...]]
    ) -> int:
        """Run ``statement`` (head, columns, tail) over ``rows`` inside :meth:`transaction`,
        many rows per statement (within SQLite's bound-variable limit); return rows changed."""
        head, ncols, tail = statement
        per_statement = max(1, min(_MAX_ROWS_PER_STATEMENT, self.max_variables // ncols))
        changed = 0
        for i in range(0, len(rows), per_statement):
            chunk = rows[i : i + per_statement]
            sql = _multi_row_sql(head, ncols, len(chunk), tail)
            cur = await self.conn.execute(sql, [v for row in chunk for v in row])
            changed += cur.rowcount
            await cur.close()
        return changed

    async def insert_array(
        self, statement: tuple[str, int, str], rows: npt.NDArray[np.object_]
    ) -> None:
        """As :meth:`insert_many` for rows as a 2-D object array (no tuple per row)."""
        head, ncols, tail = statement
        per_statement = max(1, min(_MAX_ROWS_PER_STATEMENT, self.max_variables // ncols))
        for i in range(0, len(rows), per_statement):
            chunk = rows[i : i + per_statement]
            sql = _multi_row_sql(head, ncols, len(chunk), tail)
            cur = await self.conn.execute(sql, chunk.ravel().tolist())
            await cur.close()

    async def insert_many_returning(
        self, statement: tuple[str, int, str], rows: Sequence[tuple[Any, ...]]
    ) -> list[sqlite3.Row]:
        """As :meth:`insert_many` for a statement ending in ``RETURNING``: its rows."""
        head, ncols, tail = statement
        per_statement = max(1, min(_MAX_ROWS_PER_STATEMENT, self.max_variables // ncols))
        out: list[sqlite3.Row] = []
        for i in range(0, len(rows), per_statement):
            chunk = rows[i : i + per_statement]
            sql = _multi_row_sql(head, ncols, len(chunk), tail)
            async with self.conn.execute(sql, [v for row in chunk for v in row]) as cur:
                out.extend(await cur.fetchall())
        return out

    async def write_counters(
        self,
        counters: dict[str, int],
        now: float,
        node_rejects: dict[tuple[str, str], tuple[int, int]] | None = None,
    ) -> None:
        """Replace the stored counters with the collector's current ones; add node rejects."""
        async with self.transaction("writing counters"):
            await self.executemany(
                "INSERT INTO counters (name, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "updated = excluded.updated",
                [(k, v, now) for k, v in counters.items()],
            )
            if node_rejects:
                await self.executemany(
                    "INSERT INTO node_rejects (node, reason, count, last_ms) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (node, reason) DO UPDATE SET count = count + excluded.count, "
                    "last_ms = max(last_ms, excluded.last_ms)",
                    [(n, r, c, t) for (n, r), (c, t) in node_rejects.items()],
                )

    async def delete_older_than(self, cutoff_ms: int, chunk_rows: int) -> int:
        """Delete at most ``chunk_rows`` samples that arrived before ``cutoff_ms``.

        Small chunks keep each write transaction short, so ingestion never stalls behind
        retention. The oldest arrivals go first, found through the ``received_ms`` index.
        """
        return await self._delete(
            "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples "
            "WHERE received_ms < ? ORDER BY received_ms LIMIT ?)",
            (cutoff_ms, chunk_rows),
            "retention delete",
        )

    async def delete_rollups_older_than(self, res: int, cutoff_s: float, chunk_rows: int) -> int:
        """Delete at most ``chunk_rows`` rollups of resolution ``res`` whose bucket began
        before ``cutoff_s`` (and, for the hours, ledger hours); return the most rows one
        table lost (a full chunk: call again)."""
        cutoff = int(cutoff_s)
        async with self.transaction("rollup retention delete"):
            node = await self.execute(RETENTION_SQL, (res, cutoff, chunk_rows))
            ledger = 0
            if res == HOUR:
                ledger = await self.execute(LEDGER_RETENTION_SQL, (cutoff, chunk_rows))
                await self.execute("DELETE FROM ledger_dirty WHERE hour < ?", (cutoff,))
                await self.execute(DAILY_RETENTION_SQL, (cutoff // 86_400,))
        return max(node, ledger)

    async def trim_quarantine(self, keep_rows: int) -> int:
        """Keep only the newest ``keep_rows`` quarantined messages; return how many went."""
        return await self._delete(
            "DELETE FROM quarantine WHERE id <= (SELECT max(id) FROM quarantine) - ?",
            (keep_rows,),
            "quarantine trim",
        )

    async def trim_node_rejects(self, keep_rows: int) -> int:
        """Keep the ``keep_rows`` (node, reason) pairs rejected most recently."""
        return await self._delete(
            "DELETE FROM node_rejects WHERE (node, reason) IN (SELECT node, reason FROM "
            "node_rejects ORDER BY last_ms DESC LIMIT -1 OFFSET ?)",
            (keep_rows,),
            "node rejects trim",
        )

    async def _delete(self, sql: str, params: Sequence[Any], what: str) -> int:
        """Run one DELETE in its own transaction; return how many rows went."""
        async with self.transaction(what):
            return await self.execute(sql, params)

    async def meta(self, key: str) -> str | None:
        """A fact the collector stored with :meth:`write_batch` (``meta=``), or ``None``."""
        rows = await self.fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    # -- reader side ---------------------------------------------------------------------

    async def run(self, query: Query[T]) -> T:
        """A query (:mod:`collector.store.query`) on this connection: the async counterpart
        of :func:`collector.store.query.run`, the only one."""
        return query.build([await self.fetchall(sql, p) for sql, p in query.statements])

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read query and return all rows (``sqlite3.Row``: by index or name)."""
        try:
            async with self.conn.execute(sql, params) as cur:
                rows = await cur.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc
        return list(rows)
