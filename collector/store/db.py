"""The collector's store: one connection, its migrations, and its writes.

One :class:`Store` owns one connection: to a SQLite file (aiosqlite, WAL mode, so
``collector query`` can read while the daemon writes), or to PostgreSQL
(:class:`~collector.store.pg.PgBackend`) for a ``postgresql://`` target. Only the
collector's writer task calls the ``write_*`` methods, so there is no lock: one owner, one
transaction at a time. Readers open their own connection with :meth:`Store.open_readonly`.
The schema is in :mod:`collector.store.migrations`; what differs between the backends is in
their backend class (:class:`_Sqlite` here, ``PgBackend``), the rest is written once.

Durability: SQLite's ``synchronous = FULL`` by default (PostgreSQL: its default
``synchronous_commit``), so a committed batch survives a power cut or an OS crash, not only
a process crash: the collector acknowledges samples to the broker after the commit, and the
broker forgets what it has been told is stored.

A failed write is rolled back and raised as :class:`StoreError` whose ``fatal`` says whether
the store itself is unusable (disk full, I/O error, read-only, corrupt, locked) or only this
batch could not be written (a value the store refuses): the writer bisects the latter. On
PostgreSQL ``unavailable`` says the server went away (restart, failover): the writer
reconnects (:meth:`Store.reconnect`) and writes the batch again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import math
import operator
import os
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Self, TypeVar, cast

import aiosqlite
import numpy as np
import numpy.typing as npt

from collector.paths import StoreTarget
from collector.store.codec import DictionaryTrainer, PayloadCodec, varint
from collector.store.connect import Synchronous, open_async
from collector.store.dialect import Dialect, Row
from collector.store.errors import open_failed
from collector.store.fold import Fold, Stage
from collector.store.ledger import DAILY_RETENTION_SQL, LEDGER_RETENTION_SQL
from collector.store.migrations import (
    MIGRATIONS,
    NEWEST_MIGRATION_SQL,
    migrations_for,
    refuse_newer,
    refuse_newest,
)
from collector.store.partials import Staged, stage
from collector.store.query import Query
from collector.store.reader import StoreReader
from collector.store.rollups import HOUR, RETENTION_SQL, STAGE_SQL, RollupConfig
from collector.store.rows import SampleRow
from collector.store.watermarks import WATERMARK_UPSERT, WatermarkRow
from collector.store.writes import MAX_ROWS_PER_STATEMENT, Tx, statement_rows
from shared.errors import NotLeaderError, StoreError
from shared.logging import get_logger

if TYPE_CHECKING:
    from collector.store.pg import PgBackend

__all__ = [
    "MIGRATIONS",
    "TOTALS",
    "NodeUpdate",
    "QuarantineRow",
    "SampleRow",
    "Store",
    "Synchronous",
    "batch_totals",
    "sqlite_variable_limit",
]

log = get_logger("store")

T = TypeVar("T")


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
_AFTER_PAYLOAD: Final = slice(_SUMMARY + 1, _SUMMARY + 4)
"""SampleRow's columns after the payload that are columns of ``samples`` (epoch, node power
and its source; not the packed GPUs)."""


def _sample_columns(
    fields: Sequence[Sequence[Any]], payloads: Sequence[bytes], dict_id: int | None
) -> list[Sequence[Any]]:
    """A batch's ``samples`` rows as columns (:data:`_SAMPLE_COLUMNS`' order), from its
    :class:`SampleRow` fields as columns (``list(zip(*rows))``) and its stored payloads:
    made in C (no tuple per row in Python), as statements take them
    (:meth:`_Sqlite.insert_columns`, or rows again by ``zip``)."""
    if not fields:
        return [() for _ in range(_INSERT_SAMPLES[1])]
    return [*fields[:_SUMMARY], payloads, [dict_id] * len(payloads), *fields[_AFTER_PAYLOAD]]


_UPSERT_TEMPLATE: Final = (
    "INSERT INTO payload_templates (sha256, body, used_ms)",
    3,
    " ON CONFLICT (sha256) DO UPDATE SET used_ms = CASE WHEN excluded.used_ms >"
    " payload_templates.used_ms THEN excluded.used_ms ELSE payload_templates.used_ms END",
)
"""A template a batch needs, or a later use of one stored (its row locked until the commit:
a retention delete of another collector waits, then finds it used)."""
_TEMPLATES_KEPT: Final = 200_000
"""Templates :class:`Store` remembers the ids of (a node's is ~0.5 KB with 8 GPUs)."""
_NodeTemplate = tuple[bytes | None, int, bytes]
"""A node's last template (:attr:`Store._by_node`): its body, its id, its head (the id as a
varint, before each frame)."""
_NO_TEMPLATE: Final[_NodeTemplate] = (None, 0, b"")
"""A node with none remembered: its template (``None``) equals no row's."""
_BODY, _ID, _HEAD = (operator.itemgetter(k) for k in range(3))
TEMPLATE_MARGIN_MS: Final = 3_600_000
"""A template is deleted once no sample has used it for this long past the samples'
retention (:meth:`Store.delete_unused_templates`): twice the staleness below."""
_TEMPLATE_FRESH_MS: Final = TEMPLATE_MARGIN_MS // 2
"""A remembered template id is named without a lookup only while the store knows its row's
``used_ms`` to be at most this old; older, the batch writes the use in its own transaction."""
TEMPLATE_USES_EVERY_MS: Final = 300_000
"""How often :meth:`Store.write_template_uses` writes the uses back (well under
:data:`_TEMPLATE_FRESH_MS`, so a template in use is never looked up again)."""
_RETURNING: Final = sqlite3.sqlite_version_info >= (3, 35, 0)
"""``RETURNING`` (SQLite 3.35, 2021): the insert itself says which samples were new."""

_INSERT_NODE: Final = ("INSERT INTO nodes (node)", 1, " ON CONFLICT (node) DO NOTHING")
_UPSERT_STATUS: Final = (
    "INSERT INTO nodes (node, status, status_ts)",
    3,
    " ON CONFLICT (node) DO UPDATE SET status = excluded.status, status_ts = excluded.status_ts"
    " WHERE nodes.status_ts IS NULL OR nodes.status_ts < excluded.status_ts",
)
_UPSERT_INVENTORY: Final = (
    "INSERT INTO nodes (node, inventory, inventory_ts)",
    3,
    " ON CONFLICT (node) DO UPDATE SET inventory = excluded.inventory,"
    " inventory_ts = excluded.inventory_ts"
    " WHERE nodes.inventory_ts IS NULL OR nodes.inventory_ts < excluded.inventory_ts",
)
"""Node status and inventory only move forward in the message's own time: with several
collectors in a share group, two may store messages of one node in either order, and an
older commit must not replace a newer status (nor a redelivered message an update)."""
_FENCE: contextvars.ContextVar[int | None] = contextvars.ContextVar("capwatch_fence", default=None)
"""The fencing token :meth:`Store.transaction` checks first, in this task (:meth:`Store.fenced`)."""
_INSERT_QUARANTINE: Final = (
    "INSERT INTO quarantine "
    "(received_ms, node, topic, reason, detail, payload_head, payload_bytes)",
    7,
    "",
)
_ADD_TOTALS: Final = (
    "INSERT INTO counters (name, value, updated)",
    3,
    " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value, "
    "updated = excluded.updated",
)
TOTALS: Final = ("stored_total", "duplicates_total", "quarantined_total")
"""The store's own counts, added in each batch's transaction: what was committed, across
every collector process and restart (a SIGKILLed batch is neither stored nor counted).
``quarantined_total_<reason>`` splits the last by reason. The other rows of ``counters``
are the running process's (:meth:`write_counters`)."""


def batch_totals(
    sample_rows: int,
    inserted: int,
    quarantine: Sequence[QuarantineRow],
    unkept: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """What one batch adds to :data:`TOTALS` (only the counts that are not zero): the
    rejected messages ``unkept`` (per reason) count as quarantined too, though only
    ``quarantine`` is written (:data:`collector.ingest.validate.QUARANTINE_PER_KEY`)."""
    reasons = Counter(q.reason for q in quarantine)
    reasons.update(unkept or {})
    totals: dict[str, int] = {
        "stored_total": inserted,
        "duplicates_total": sample_rows - inserted,
        "quarantined_total": reasons.total(),
    }
    totals.update((f"quarantined_total_{reason}", n) for reason, n in reasons.items())
    return {k: v for k, v in totals.items() if v > 0}


_UPSERT_META: Final = (
    "INSERT INTO meta (key, value, updated)",
    3,
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
)

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


Kind = Literal["unavailable", "fatal", "refused"]
"""What a failed write means: reconnect and retry, stop, or bisect the batch."""

_DAY_MS: Final = 86_400_000


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


class _Sqlite:
    """SQLite's side of :class:`Store`: the aiosqlite connection and what only SQLite does
    (the file's identity, the bound-variable limit, the pragmas).

    The statements are synchronous methods on the :class:`sqlite3.Connection` (a
    :class:`~collector.store.writes.Tx`), run in aiosqlite's thread by :meth:`call`: one
    statement at a time (the store's async methods), or a whole transaction at once
    (:meth:`Store.transact`)."""

    dialect: Dialect = "sqlite"
    nan_is_null: bool = True

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool,
        synchronous: Synchronous,
        variable_limit: int | None,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.synchronous: Synchronous = synchronous
        self._limit_override = variable_limit
        self._conn: aiosqlite.Connection | None = None
        self._raw: sqlite3.Connection | None = None
        """The connection aiosqlite drives, used only in its thread (:meth:`call`)."""
        self._identity: tuple[int, int] | None = None
        """(device, inode) of the file when it was opened: a write checks it is still there."""
        self.max_variables = min(sqlite_variable_limit(), variable_limit or 1 << 30)

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError("store is not open: use `async with Store(path)`")
        return self._conn

    @property
    def raw(self) -> sqlite3.Connection:
        if self._raw is None:
            raise StoreError("store is not open: use `async with Store(path)`")
        return self._raw

    async def open(self) -> None:
        self._conn = await open_async(
            self.path,
            write=not self.readonly,
            synchronous=self.synchronous,
            factory=_connection_factory(self._limit_override),
        )
        async with self._conn.cursor() as cur:
            self._raw = cur.connection

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in aiosqlite's thread, the one that owns the connection.

        aiosqlite has no public way to run a function there: ``Connection._execute`` is what
        each of its own methods does (queue the call to its thread, await the result). Each
        such call is a round trip that waits for the event loop to come back, so a
        transaction of many statements held the store for as long as the loop was busy;
        running its statements one after the other in that thread makes them one round
        trip (the maintainer agrees: https://github.com/omnilib/aiosqlite/issues/19). This
        is the one place that uses it; tests/collector/store/test_transact.py fails clearly
        if an aiosqlite release drops it.
        """
        return cast("T", await self.conn._execute(fn, *args))  # type: ignore[no-untyped-call]

    def remember_file(self) -> None:
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    async def reconnect(self) -> None:
        raise StoreError(f"the database {str(self.path)!r} cannot be reopened", fatal=True)

    async def close(self) -> None:
        conn, self._conn, self._raw = self._conn, None, None
        if conn is not None:
            await conn.close()

    @staticmethod
    def kind(exc: BaseException) -> Kind:
        return "fatal" if _is_fatal(exc) else "refused"

    @staticmethod
    def hint(exc: BaseException) -> str:
        return _hint(exc)

    async def migrate(self, migrations: Sequence[tuple[str, str]]) -> list[str]:
        conn = self.conn
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        async with conn.execute("SELECT name FROM schema_migrations") as cur:
            done = {row[0] async for row in cur}
        refuse_newer(self.path, done, migrations)
        applied = []
        for name, sql in migrations:
            if name in done:
                continue
            await conn.executescript(
                f"BEGIN;\n{sql}\nINSERT INTO schema_migrations VALUES ('{name}', {time.time()});"
                "\nCOMMIT;"
            )
            applied.append(name)
        return applied

    # -- statements: synchronous, in aiosqlite's thread (:meth:`call`) -------------------

    def begin(self) -> None:
        """A write transaction, the file's write lock taken now (waiting for the busy
        timeout): a read first and a write after in a deferred transaction could not wait
        for another writer, whose commit in between ends it with SQLITE_BUSY_SNAPSHOT."""
        if not self.raw.in_transaction:
            self.raw.execute("BEGIN IMMEDIATE")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self.raw.execute(sql, params)
        changed = cur.rowcount
        cur.close()
        return max(changed, 0)

    def returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.raw.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.raw.executemany(sql, rows)

    def insert_many(
        self,
        statement: tuple[str, int, str],
        rows: Sequence[tuple[Any, ...]],
        max_rows: int = MAX_ROWS_PER_STATEMENT,
    ) -> int:
        head, ncols, tail = statement
        changed = 0
        for i, n in statement_rows(len(rows), self._per_statement(ncols, max_rows)):
            sql = _multi_row_sql(head, ncols, n, tail)
            changed += self.execute(sql, [v for row in rows[i : i + n] for v in row])
        return changed

    def _per_statement(self, ncols: int, max_rows: int = MAX_ROWS_PER_STATEMENT) -> int:
        """The most rows of ``ncols`` columns one statement takes."""
        return max(1, min(max_rows, self.max_variables // ncols))

    def insert_array(self, statement: tuple[str, int, str], rows: npt.NDArray[np.object_]) -> None:
        """As :meth:`insert_many` for rows as a 2-D object array (no tuple per row)."""
        head, ncols, tail = statement
        for i, n in statement_rows(len(rows), self._per_statement(ncols)):
            sql = _multi_row_sql(head, ncols, n, tail)
            self.execute(sql, rows[i : i + n].ravel().tolist())

    def insert_columns(
        self, statement: tuple[str, int, str], columns: Sequence[Sequence[Any]]
    ) -> int:
        """As :meth:`insert_many` for rows given as ``ncols`` columns: each statement's
        parameters laid out by slice (in C), not a tuple per row flattened in Python.

        A column all ``None`` (a batch of agents that send no epoch, no node power) is
        bound as NaN, which SQLite stores as NULL (https://sqlite.org/floatingpoint.html,
        "NaN"), as it stores ``None``: ``float`` is bound as it is, where ``None`` goes
        through sqlite3's adapter lookup first (:func:`~collector.store.connect.bind_plainly`:
        ~1,300 instructions a value even so)."""
        head, ncols, tail = statement
        n = len(columns[0])
        null = {k for k, c in enumerate(columns) if n and c[0] is None and c.count(None) == n}
        changed = 0
        for i, rows in statement_rows(n, self._per_statement(ncols)):
            params: list[Any] = [None] * (rows * ncols)
            nans = [math.nan] * rows if null else []
            for k, column in enumerate(columns):
                params[k::ncols] = nans if k in null else column[i : i + rows]
            changed += self.execute(_multi_row_sql(head, ncols, rows, tail), params)
        return changed

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.raw.execute(sql, params).fetchall()

    def fetch_tuples(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A read whose rows are plain tuples (a third of the cost of ``sqlite3.Row``)."""
        cur = self.raw.cursor()
        cur.row_factory = None  # rows are the tuples sqlite3 builds: no copy of each
        return cast("list[tuple[Any, ...]]", cur.execute(sql, params).fetchall())

    def commit(self) -> None:
        self._check_file()
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def check_fence(self, token: int) -> None:
        """One collector owns a SQLite file (its lock): no term to check."""

    def lock_fold(self) -> None:
        """One collector per SQLite file: no other fold to wait for."""

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

    def insert_samples(self, rows: Sequence[tuple[Any, ...]]) -> int:
        return self.insert_many(_INSERT_SAMPLES, rows)

    def insert_samples_new(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, int]] | None:
        """Insert ``rows``; the ``(node, ts_ms)`` of those that were new (``None``: this
        SQLite has no ``RETURNING``, nothing was inserted)."""
        if not _RETURNING:
            return None
        head, ncols, tail = _INSERT_SAMPLES
        out: list[tuple[str, int]] = []
        for i, n in statement_rows(len(rows), self._per_statement(ncols)):
            chunk = rows[i : i + n]
            sql = _multi_row_sql(head, ncols, n, tail + " RETURNING node, ts_ms")
            out.extend((r[0], r[1]) for r in self.returning(sql, [v for row in chunk for v in row]))
        return out

    # -- the rest: async, as PostgreSQL's -------------------------------------------------

    async def prepare_samples(self, days: set[int]) -> None:
        del days  # one table: nothing to prepare

    async def drop_days_before(self, cutoff_ms: int, move_max_rows: int) -> int:
        del cutoff_ms, move_max_rows  # no partitions: retention deletes rows
        return 0

    async def continue_identities(self, tables: Sequence[str]) -> None:
        del tables  # an INTEGER PRIMARY KEY continues after the largest by itself

    async def size_bytes(self) -> int:
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total


_COUNTERS_UPSERT: Final = (
    "INSERT INTO counters (name, value, updated)",
    3,
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
)
_NODE_REJECTS_ADD: Final = (
    "INSERT INTO node_rejects (node, reason, count, last_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (node, reason) DO UPDATE SET count = node_rejects.count + excluded.count, "
    "last_ms = CASE WHEN excluded.last_ms > node_rejects.last_ms "
    "THEN excluded.last_ms ELSE node_rejects.last_ms END"
)
_TRIM_QUARANTINE: Final = "DELETE FROM quarantine WHERE id <= (SELECT max(id) FROM quarantine) - ?"
_TRIM_NODE_REJECTS: Final = (
    "DELETE FROM node_rejects WHERE (node, reason) IN (SELECT node, reason FROM "
    "node_rejects ORDER BY last_ms DESC LIMIT ? OFFSET ?)"
)
"""Parameters: a LIMIT meaning "all" in both dialects (SQLite needs one), then how many
pairs to keep."""


class Store:
    """Async context manager around the store (a SQLite file or a PostgreSQL database).

    >>> async with Store(path) as store:
    ...     await store.write_batch(rows)

    ``variable_limit`` lowers SQLite's bound-variable limit on this connection (as an old
    library would have it); statements are then cut to fit.
    """

    def __init__(
        self,
        path: StoreTarget,
        *,
        readonly: bool = False,
        compress: bool = True,
        synchronous: Synchronous = "full",
        variable_limit: int | None = None,
        rollups: RollupConfig | None = None,
        stage_owner: str = "",
    ) -> None:
        self.path = path
        self.rollups = rollups
        """How :meth:`write_batch` rolls new samples up (``None``: it does not)."""
        self.stage_owner = stage_owner
        """Whose staged samples this store writes, takes back and folds: its collector's
        MQTT session client id (several collectors may write one PostgreSQL store)."""
        self._stage = None if rollups is None else Stage(stage_owner, rollups)
        """The samples staged for the rollups and not folded yet (:mod:`collector.store.fold`)."""
        self.readonly = readonly
        self.synchronous: Synchronous = synchronous
        self.codec = PayloadCodec() if compress else PayloadCodec(b"")
        """How sample payloads are stored (``payload_dicts``): compressed with a dictionary,
        or (``compress=False``) as they are."""
        self.trainer = DictionaryTrainer() if compress else DictionaryTrainer(0)
        """Trains the dictionary :attr:`codec` changes to, on the payloads stored."""
        self._compress = compress
        self._templates: dict[bytes, int] = {}
        """Templates stored (``payload_templates``) by their body: their ids."""
        self._confirmed: dict[int, int] = {}
        """Per remembered template id, a ``used_ms`` its row is known to hold (or more)."""
        self._by_node: dict[str, _NodeTemplate] = {}
        """Per node, the template its last stored batch named, with the template's id and
        head (the id as a varint): a batch whose nodes all name the same ones again finds
        their ids without hashing a template (:meth:`_payloads`)."""
        self._used: dict[int, int] = {}
        """Template ids committed batches named since the last write-back: their last use
        (the batch's latest ``received_ms``); :meth:`write_template_uses`."""
        self._uses_due_ms = 0
        """When :meth:`write_template_uses` writes the uses back next (ms)."""
        self._dict_id: int | None = None
        """:attr:`codec`'s row (registered when the store opens; ``compress=False``: before
        the first samples are written, so a store only copied into holds no codec)."""
        self._db: _Sqlite | PgBackend
        if isinstance(path, Path):
            self._db = _Sqlite(
                path, readonly=readonly, synchronous=synchronous, variable_limit=variable_limit
            )
        else:
            from collector.store.pg import PgBackend  # noqa: PLC0415 - psycopg: PostgreSQL only

            self._db = PgBackend(path, write=not readonly, sample_columns=_SAMPLE_COLUMNS)

    @classmethod
    def open_readonly(cls, path: StoreTarget) -> Self:
        """A store for queries: fails clearly if it does not exist, never writes."""
        return cls(path, readonly=True)

    @property
    def dialect(self) -> Dialect:
        """Which backend this store is."""
        return self._db.dialect

    @property
    def max_variables(self) -> int:
        """SQLite: the most bound variables a statement of this connection may have."""
        return self._db.max_variables

    @property
    def conn(self) -> aiosqlite.Connection:
        """The open SQLite connection (tests reach it to fake a failing disk)."""
        if not isinstance(self._db, _Sqlite):
            raise StoreError("a PostgreSQL store has no SQLite connection")
        return self._db.conn

    async def __aenter__(self) -> Self:
        try:
            await self._db.open()
        except BaseException:  # cancelled half-way: close what was opened (no thread left)
            await self._close()
            raise
        if self.readonly:
            return self
        try:
            if isinstance(self._db, _Sqlite):
                self._db.remember_file()
            await self._migrate()
            if self._compress:
                self._dict_id = await self._latest_codec()
            if self._stage is not None:
                await self._stage.read_back(self, time.time())
        except (sqlite3.Error, OSError) as exc:
            await self._close()
            raise open_failed(self.path, exc, creating=True) from exc
        except StoreError:
            await self._close()
            raise
        except Exception as exc:  # psycopg's errors: this module does not import psycopg
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
        await self._db.close()

    async def reconnect(self) -> None:
        """After an ``unavailable`` error: a new connection (PostgreSQL), or
        :class:`StoreError` while the server cannot be reached."""
        try:
            await self._db.reconnect()
        except StoreError as exc:  # it was reachable at the start: still away, not a mistake
            raise StoreError(str(exc), fatal=True, unavailable=True, exit_code=1) from exc
        log.info("store_reconnected", db=str(self.path))
        # A restarted server or a new primary may hold a store a newer capwatch migrated
        # meanwhile: stop (exit 2) rather than write it by the older rules.
        refuse_newest(self.path, await self.newest_migration())

    async def _migrate(self) -> None:
        for name in await self._db.migrate(migrations_for(self.dialect)):
            log.info("migration_applied", name=name, db=str(self.path))

    async def _register_codec(self, codec: PayloadCodec) -> int:
        """``codec``'s row of ``payload_dicts`` (added if new), in its own transaction."""
        async with self.transaction("registering the payload dictionary"):
            await self.execute(
                "INSERT INTO payload_dicts (sha256, dict, layout) VALUES (?, ?, ?) "
                "ON CONFLICT (sha256) DO NOTHING",
                (codec.sha256, codec.dictionary, codec.layout),
            )
        rows = await self.fetchall("SELECT id FROM payload_dicts WHERE sha256 = ?", (codec.sha256,))
        return int(rows[0][0])

    async def _latest_codec(self) -> int:
        """Go on with the newest compressing codec of this layout (a trained dictionary is
        only stored when it did better than the one before), else register the first."""
        rows = await self.fetchall(
            "SELECT id, dict FROM payload_dicts WHERE layout = ? ORDER BY id DESC LIMIT 1",
            (self.codec.layout,),
        )
        if rows and rows[0][1]:
            self.codec = PayloadCodec(bytes(rows[0][1]))
            return int(rows[0][0])
        return await self._register_codec(self.codec)

    async def _codec_id(self) -> int:
        """The row of the codec to store this batch's payloads with: a dictionary trained
        on the payloads stored so far, when the trainer has one that does better."""
        if self._dict_id is None:
            self._dict_id = await self._register_codec(self.codec)
        if self.trainer.due:
            # Off the event loop; zstd's trainer holds no GIL (~0.2 s, once in a while).
            trained = await asyncio.to_thread(self.trainer.train, self.codec)
            if trained is not None:
                self._dict_id = await self._register_codec(trained)
                self.codec = trained
                log.info(
                    "payload_dictionary_trained", id=self._dict_id, bytes=len(trained.dictionary)
                )
        return self._dict_id

    async def _compressed(
        self, rows: Sequence[SampleRow]
    ) -> tuple[list[bytes], list[bytes]] | None:
        """Each row's template and frame (:mod:`collector.store.codec`), made off the event
        loop in one GIL-free call for the whole batch; ``None``: stored as they are
        (uncompressed, or no rows)."""
        if not self._compress or not rows:
            return None
        templates, bodies, frames = await asyncio.to_thread(
            self.codec.compress_rows, [r.payload for r in rows]
        )
        self.trainer.offer(bodies)
        return templates, frames

    def _payloads(
        self,
        tx: Tx,
        rows: Sequence[SampleRow],
        nodes: Sequence[str],
        made: tuple[list[bytes], list[bytes]] | None,
        uses: _TemplateUses,
    ) -> list[bytes]:
        """The batch's payloads as stored (in its transaction, :meth:`transact`):
        uncompressed, the rows' own; compressed, each its template's id and its frame.
        Templates not stored yet, or whose row's ``used_ms`` this store does not know to be
        recent, are written here (their use too), their ids in ``uses.looked_up``; every id
        the batch names in ``uses.ids``.

        A node's samples name the same template batch after batch: when every row's is its
        node's last one (:attr:`_by_node`; compared, not hashed) and those ids are recent,
        the heads are the ones remembered (in C, no loop over the rows in Python)."""
        if made is None:
            return [r.payload for r in rows]
        templates, frames = made
        known, confirmed = self._templates, self._confirmed
        fresh = uses.ms - _TEMPLATE_FRESH_MS
        last = list(map(self._by_node.get, nodes, repeat(_NO_TEMPLATE)))
        if all(map(operator.eq, map(_BODY, last), templates)):
            named = set(map(_ID, last))
            named.discard(0)
            if min(map(confirmed.get, named, repeat(-1)), default=fresh) >= fresh:
                uses.ids = list(named)
                return list(map(operator.add, map(_HEAD, last), frames))
        ids: dict[bytes, int | None] = {}
        for t in set(templates):
            i = known.get(t)
            ids[t] = i if i is not None and confirmed.get(i, fresh - 1) >= fresh else None
        ids[b""] = 0
        missing = {self.codec.template_key(t): t for t, i in ids.items() if i is None}
        new_templates = uses.looked_up
        if missing:
            keys = sorted(missing)  # rows locked in one order by every collector
            tx.insert_many(_UPSERT_TEMPLATE, [(k, missing[k], uses.ms) for k in keys])
            step = max(1, tx.max_variables - 1)
            for i in range(0, len(keys), step):
                chunk = keys[i : i + step]
                for key, template_id in tx.fetch_tuples(
                    "SELECT sha256, id FROM payload_templates WHERE sha256 IN "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    ids[missing[key]] = new_templates[missing[key]] = int(template_id)
        found = {t: (t, i, varint(i)) for t, i in ids.items() if i is not None}
        uses.ids = [i for i in ids.values() if i]
        uses.by_node = dict(zip(nodes, map(found.__getitem__, templates), strict=True))
        return [found[t][2] + f for t, f in zip(templates, frames, strict=True)]

    def _remember_templates(self, uses: _TemplateUses) -> None:
        """The templates a committed batch named: later batches name the ones it looked up
        without a lookup, and its uses are written back (:meth:`write_template_uses`)."""
        stored = uses.looked_up
        if len(self._templates) + len(stored) > _TEMPLATES_KEPT or (
            len(self._by_node) + len(uses.by_node) > _TEMPLATES_KEPT
        ):
            self._templates.clear()  # nodes come and go: forget them all, look up again
            self._confirmed.clear()
            self._by_node.clear()
        self._templates.update(stored)
        self._by_node.update(uses.by_node)
        self._confirmed.update(dict.fromkeys(stored.values(), uses.ms))
        self._used.update(dict.fromkeys(uses.ids, uses.ms))

    async def write_template_uses(
        self, now_ms: int, *, every_ms: int = TEMPLATE_USES_EVERY_MS
    ) -> int:
        """Write the template uses of the batches committed since the last write-back into
        ``payload_templates.used_ms``, in one short transaction, if ``every_ms`` have passed
        since then (``now_ms``: the writer's clock); return how many ids were written.

        Each row gets the latest use of them all (later than its own by at most
        ``every_ms``: a template lives that much longer, never less). Uses this store has
        not written back when it stops or crashes are not needed for safety: a batch only
        names a template without a lookup while its row is known to have been used within
        :data:`_TEMPLATE_FRESH_MS`, well inside :data:`TEMPLATE_MARGIN_MS`."""
        if now_ms < self._uses_due_ms:
            return 0
        used, self._used = self._used, {}
        self._uses_due_ms = now_ms + every_ms
        if not used:
            return 0
        top = max(used.values())
        ids = sorted(used)

        def work(tx: Tx) -> None:
            step = max(1, min(MAX_ROWS_PER_STATEMENT, tx.max_variables - 2))
            order = ids
            if tx.dialect == "postgresql":
                # The statements take their slices in sha256 order too: ids follow sha256
                # only within the batch that stored them, and a fleet's thousands of
                # templates (one a node) make several statements.
                found: list[tuple[str, int]] = []
                for i in range(0, len(ids), step):
                    chunk = ids[i : i + step]
                    found += tx.fetch_tuples(
                        "SELECT sha256, id FROM payload_templates "
                        f"WHERE id IN ({', '.join('?' * len(chunk))})",
                        chunk,
                    )
                order = [int(i) for _, i in sorted(found)]
            for i in range(0, len(order), step):
                chunk = order[i : i + step]
                marks = ", ".join("?" * len(chunk))
                if tx.dialect == "postgresql":
                    # Row locks in sha256 order, the order a batch's upsert takes them
                    # (_payloads): in id order, a write-back and another collector's batch
                    # could each hold a row the other waits for (a deadlock, one aborted).
                    tx.fetch_tuples(
                        f"SELECT id FROM payload_templates WHERE id IN ({marks}) "
                        "ORDER BY sha256 FOR UPDATE",
                        chunk,
                    )
                tx.execute(
                    "UPDATE payload_templates SET used_ms = ? WHERE used_ms < ? "
                    f"AND id IN ({marks})",
                    [top, top, *chunk],
                )

        try:
            await self.transact("writing template uses", work)
        except BaseException:
            for i, ms in used.items():  # not written: the next write-back takes them
                self._used[i] = max(ms, self._used.get(i, ms))
            raise
        confirmed = self._confirmed
        for i in ids:
            if confirmed.get(i, top) < top:
                confirmed[i] = top
        return len(ids)

    async def delete_unused_templates(self, cutoff_ms: int, chunk_rows: int) -> int:
        """Delete at most ``chunk_rows`` payload templates no sample arrived with since
        ``cutoff_ms - TEMPLATE_MARGIN_MS`` (``cutoff_ms``: the samples' retention cutoff, as
        :meth:`delete_older_than`); return how many went.

        No stored sample names such a template once the samples before ``cutoff_ms`` are
        gone: a batch that names one writes its use in its own transaction, or names it
        from memory only while its ``used_ms`` is recent (:data:`_TEMPLATE_FRESH_MS`), and
        uses are written back every :data:`TEMPLATE_USES_EVERY_MS`; the margin covers that
        delay, a crash that lost the uses not written back, and the clocks of several
        collectors. The newest template is kept, so SQLite never gives its id to another
        (an ``INTEGER PRIMARY KEY`` continues after the largest: a reader's cache, by id,
        stays right). What this store remembers of the deleted ones is forgotten."""
        before = cutoff_ms - TEMPLATE_MARGIN_MS
        gone = await self._delete(
            "DELETE FROM payload_templates WHERE id IN (SELECT id FROM payload_templates "
            "WHERE used_ms < ? AND id < (SELECT max(id) FROM payload_templates) LIMIT ?)",
            (before, chunk_rows),
            "template retention delete",
        )
        if gone:
            confirmed = self._confirmed
            stale = {t for t, i in self._templates.items() if confirmed.get(i, before) < before}
            for t in stale:
                del confirmed[self._templates.pop(t)]
        return gone

    async def newest_migration(self) -> str | None:
        """The greatest name in the migrations' record (:func:`~collector.store.migrations.
        refuse_newest` says whether a newer capwatch added it)."""
        rows = await self.fetchall(NEWEST_MIGRATION_SQL)
        return rows[0][0] if rows else None

    async def migrations(self) -> list[str]:
        """Names of the applied migrations, in order."""
        return [
            row[0]
            for row in await self.fetchall("SELECT name FROM schema_migrations ORDER BY name")
        ]

    async def size_bytes(self) -> int:
        """Bytes the store takes on disk (SQLite: file and WAL; PostgreSQL: the database);
        :class:`StoreError` when it cannot be read (the server away)."""
        try:
            return await self._db.size_bytes()
        except StoreError:
            raise
        except Exception as exc:
            raise self._read_failed(exc) from exc

    @staticmethod
    def sample_columns() -> tuple[str, ...]:
        """The columns of ``samples``, in the order :meth:`import_rows` takes them."""
        return tuple(c.strip() for c in _SAMPLE_COLUMNS.split(","))

    async def import_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
    ) -> int:
        """Insert rows copied from another store (``collector migrate``) in one transaction;
        samples (in :meth:`sample_columns` order) by the sample path. Return rows inserted."""
        what = f"importing {len(rows)} rows of {table}"
        if table == "samples":
            if tuple(columns) != self.sample_columns():
                raise StoreError(f"samples columns {list(columns)} are not this version's")
            try:
                await self._db.prepare_samples({int(r[1]) // _DAY_MS for r in rows})
            except Exception as exc:
                raise await self._failed(what, exc) from exc
            return await self.transact(what, lambda _: self._db.insert_samples(rows))
        statement = (f"INSERT INTO {table} ({', '.join(columns)})", len(columns), "")
        async with self.transaction(what):
            return await self.insert_many(statement, rows)

    async def continue_identities(self, tables: Sequence[str]) -> None:
        """After rows came in with their ids: each table's next id follows its largest."""
        try:
            await self._db.continue_identities(tables)
        except Exception as exc:
            raise await self._failed("setting the next ids", exc) from exc

    # -- writer side ---------------------------------------------------------------------

    async def write_batch(
        self,
        rows: Sequence[SampleRow],
        updates: Iterable[NodeUpdate] = (),
        new_nodes: Iterable[str] = (),
        quarantine: Sequence[QuarantineRow] = (),
        meta: Iterable[tuple[str, str]] = (),
        *,
        marks: Sequence[WatermarkRow] = (),
        unkept: Mapping[str, int] | None = None,
    ) -> int:
        """Write sample rows (duplicates ignored), node news, nodes first seen, quarantined
        messages (and count ``unkept`` ones, per reason, not kept), meta facts and
        watermarks (as :func:`~collector.store.watermarks.write_watermarks` does) in one
        transaction; return how many sample rows were new.

        On any failure the transaction is rolled back and :class:`StoreError` raised, with
        ``fatal`` telling a broken store from a batch the store refused.
        """
        statuses: list[tuple[Any, ...]] = []
        inventories: list[tuple[Any, ...]] = []
        for u in updates:
            if u.status is not None:
                statuses.append((u.node, u.status, u.status_ts))
            if u.inventory is not None:
                inventories.append((u.node, u.inventory, u.inventory_ts))
        now = time.time()
        what = f"storing a batch ({len(rows)} sample rows)"
        dict_id: int | None = None
        if rows:
            dict_id = await self._codec_id()
            try:  # PostgreSQL: each day's partition, before the batch's transaction
                await self._db.prepare_samples({r.ts_ms // _DAY_MS for r in rows})
            except Exception as exc:
                raise await self._failed(what, exc) from exc
        made = await self._compressed(rows)
        uses = _TemplateUses(max(map(_RECEIVED_MS, rows)) if made is not None else 0)
        rollups = self._stage

        def write(tx: Tx) -> tuple[int, int, list[tuple[int, Staged]]]:
            staged: list[tuple[int, Staged]] = []
            seq = 0
            fields = list(zip(*rows, strict=True))  # SampleRow's fields as columns
            payloads = self._payloads(tx, rows, fields[0] if rows else (), made, uses)
            samples = _sample_columns(fields, payloads, dict_id)
            if rollups is None or not rollups.config.enabled or not rows:
                inserted = self._insert_samples(samples)
            else:
                new = self._insert_samples_new(rows, samples)
                inserted = len(new)
                if new:
                    busy = rollups.config.busy_util_pct
                    staged = rollups.split(stage(new, busy, fields=fields if new is rows else None))
                    seq, stage_rows = rollups.rows(staged)
                    tx.insert_many(STAGE_SQL, stage_rows)
            tx.insert_many(_INSERT_NODE, [(n,) for n in new_nodes])
            tx.insert_many(_UPSERT_STATUS, statuses)
            tx.insert_many(_UPSERT_INVENTORY, inventories)
            tx.insert_many(_INSERT_QUARANTINE, list(quarantine))
            tx.insert_many(_UPSERT_META, [(k, v, now) for k, v in meta])
            if marks:
                tx.insert_many(WATERMARK_UPSERT, [tuple(m) for m in marks])
            totals = batch_totals(len(rows), inserted, quarantine, unkept)
            tx.insert_many(_ADD_TOTALS, [(k, v, now) for k, v in totals.items()])
            return inserted, seq, staged

        inserted, seq, staged = await self.transact(what, write)
        self._remember_templates(uses)  # committed: their ids are the store's
        if staged and rollups is not None:  # committed: the fold may count them
            rollups.committed(seq, staged)
        return max(inserted, 0)

    def _insert_samples(self, samples: list[Sequence[Any]]) -> int:
        """Insert the ``samples`` (columns, :func:`_sample_columns`); how many were new."""
        db = self._db
        if isinstance(db, _Sqlite):
            return db.insert_columns(_INSERT_SAMPLES, samples)
        return db.insert_samples(list(zip(*samples, strict=True)))

    def _insert_samples_new(
        self, rows: Sequence[SampleRow], samples: list[Sequence[Any]]
    ) -> Sequence[SampleRow]:
        """Insert the ``samples`` (columns, :func:`_sample_columns`; ``rows`` stored);
        return the rows that were new, not duplicates of a stored ``(node, ts_ms)``:
        ``rows`` itself when all were. In the store's thread (:meth:`transact`)."""
        # Usually none is a duplicate: insert plainly (RETURNING costs ~4 us a sample) and
        # count. Only when some were, undo that and ask which (duplicates come with
        # redeliveries after a reconnect: rare).
        # (PostgreSQL: the COPY's INSERT ... SELECT returns the new keys at no such cost.)
        db = self._db
        if isinstance(db, _Sqlite):
            db.execute("SAVEPOINT new_samples")
            if db.insert_columns(_INSERT_SAMPLES, samples) == len(rows):
                db.execute("RELEASE SAVEPOINT new_samples")
                return rows
            db.execute("ROLLBACK TO SAVEPOINT new_samples")
            db.execute("RELEASE SAVEPOINT new_samples")
        by_key = {(r.node, r.ts_ms): r for r in rows}
        tuples = list(zip(*samples, strict=True))
        keys = db.insert_samples_new(tuples)
        if keys is None:  # an older SQLite (no RETURNING): ask which keys exist, then insert
            present: set[tuple[str, int]] = set()
            for i in range(0, len(rows), 400):
                chunk = rows[i : i + 400]
                found = db.fetchall(
                    "SELECT node, ts_ms FROM samples WHERE "
                    + " OR ".join(["(node = ? AND ts_ms = ?)"] * len(chunk)),
                    [v for r in chunk for v in (r.node, r.ts_ms)],
                )
                present.update((f[0], f[1]) for f in found)
            db.insert_samples(tuples)
            keys = [k for k in by_key if k not in present]
        return [by_key[(k[0], k[1])] for k in keys]

    @property
    def pending_rollups(self) -> int:
        """Samples staged for the rollups and not folded yet."""
        return 0 if self._stage is None else self._stage.pending

    @property
    def rollups_taken_over(self) -> int:
        """Samples other collectors staged and this one folded, their owners gone quiet
        (:mod:`collector.store.fold`)."""
        return 0 if self._stage is None else self._stage.taken_over

    @property
    def rollups_over_reported(self) -> int:
        """Rollup buckets written whose node reported more seconds than any honest node can
        (held to what the bucket may hold: :mod:`collector.store.partials`)."""
        return 0 if self._stage is None else self._stage.over_reported

    async def fold_rollups(self, now: float | None = None) -> int:
        """Fold the staged samples into the rollups, all of them, in short transactions one
        after the other (the writer interleaves them with batches: :meth:`rollup_fold`);
        return how many samples were staged (left by a crash, too; and those taken over
        from a collector gone quiet as of ``now``, Unix s, default the clock's). See
        :mod:`collector.store.fold`."""
        if self._stage is None:
            return 0
        return await self._stage.fold_all(self, time.time() if now is None else now)

    def rollup_fold(self, now: float | None = None) -> Fold | None:
        """The rollups' fold in flight, or a new one as of ``now`` (Unix s, default the
        clock's), to write part by part (``None``: rollups are off)."""
        if self._stage is None:
            return None
        return self._stage.fold(time.time() if now is None else now)

    @property
    def folding(self) -> bool:
        """Whether a fold of the rollups is in flight (begun, not finished)."""
        return self._stage is not None and self._stage.folding is not None

    async def lock_fold(self) -> None:
        """First in a rollup fold's transaction: wait for any other collector's fold."""
        await self._db.call(self._db.lock_fold)

    @contextlib.asynccontextmanager
    async def transaction(self, what: str) -> AsyncIterator[None]:
        """One write transaction (the writer's; ``what`` names it in the error): commit (on
        SQLite once the file is known to still be ours); on any failure roll back and raise
        :class:`StoreError` saying whether the store is usable. The table modules beside this
        one (alerts, capacity snapshots) write inside it with :meth:`execute`,
        :meth:`executemany` and :meth:`insert_many`, a round trip to the store's thread
        each; :meth:`transact` writes a whole transaction in one."""
        db = self._db
        try:
            if (token := _FENCE.get()) is not None:
                await db.call(db.check_fence, token)
            yield
            await db.call(db.commit)
        except NotLeaderError:
            with contextlib.suppress(Exception):  # a broken connection ends it as well
                await db.call(db.rollback)
            raise
        except Exception as exc:
            raise await self._failed(what, exc) from exc

    async def transact(self, what: str, work: Callable[[Tx], T]) -> T:
        """``work(tx)`` as one write transaction, all of it in the store's thread: begin,
        the fence (:meth:`fenced`), ``work``'s statements on ``tx``, commit (on SQLite once
        the file is known to still be ours); one round trip to that thread instead of one
        per statement (see :mod:`collector.store.writes`). ``work`` runs outside the event
        loop: it touches no asyncio object. Failures are those of :meth:`transaction`:
        rolled back, then :class:`StoreError` (or :class:`~shared.errors.NotLeaderError`)."""
        db, token = self._db, _FENCE.get()
        rollback_failed = False

        def whole() -> T:
            nonlocal rollback_failed
            try:
                db.begin()
                if token is not None:
                    db.check_fence(token)
                done = work(db)
                db.commit()
            except BaseException:
                try:
                    db.rollback()
                except Exception:  # a broken connection: said by the error's kind
                    rollback_failed = True
                raise
            return done

        try:
            return await db.call(whole)
        except NotLeaderError:
            raise
        except Exception as exc:
            raise self._error(what, exc, rollback_failed=rollback_failed) from exc

    @staticmethod
    @contextlib.contextmanager
    def fenced(token: int | None) -> Iterator[None]:
        """Inside, each :meth:`transaction` of this task first checks that ``token`` still
        holds the leader's lease, in that same transaction (PostgreSQL:
        :func:`collector.store.leader.check_token`; the lease row lives in the store's
        database). A deposed leader's transaction then raises
        :class:`~shared.errors.NotLeaderError` and is rolled back, nothing of it written.
        ``None`` (a lone collector, SQLite) checks nothing."""
        reset = _FENCE.set(token)
        try:
            yield
        finally:
            _FENCE.reset(reset)

    async def _failed(self, what: str, exc: Exception) -> StoreError:
        """Roll back after ``exc`` and say whether the store is still usable."""
        try:
            await self._db.call(self._db.rollback)
        except Exception:
            return self._error(what, exc, rollback_failed=True)
        return self._error(what, exc, rollback_failed=False)

    def _error(self, what: str, exc: Exception, *, rollback_failed: bool) -> StoreError:
        """The :class:`StoreError` of a write that failed with ``exc`` and was rolled back
        (or could not be: then the store is not usable either)."""
        if isinstance(exc, StoreError):
            kind: Kind = "unavailable" if exc.unavailable else "refused"
        else:
            kind = self._db.kind(exc)
        if rollback_failed and kind == "refused":
            kind = "fatal"
        detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, sqlite3.Error) else str(exc)
        if self.dialect == "postgresql":
            detail = detail.strip().splitlines()[0] if detail.strip() else detail
        return StoreError(
            f"{what} failed in {str(self.path)!r}: {detail}{self._db.hint(exc)}",
            fatal=kind != "refused",
            unavailable=kind == "unavailable",
            exit_code=1,
        )

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement inside :meth:`transaction`; return how many rows it changed."""
        return await self._db.call(self._db.execute, sql, params)

    async def execute_returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one ``... RETURNING`` statement inside :meth:`transaction`; return its rows."""
        return await self._db.call(self._db.returning, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement over ``rows`` inside :meth:`transaction`."""
        await self._db.call(self._db.executemany, sql, list(rows))

    async def insert_many(
        self, statement: tuple[str, int, str], rows: Sequence[tuple[Any, ...]]
    ) -> int:
        """Run ``statement`` (head, columns, tail) over ``rows`` inside :meth:`transaction`,
        many rows per statement (within the backend's bound-variable limit); return rows
        changed."""
        if not rows:
            return 0
        return await self._db.call(self._db.insert_many, statement, rows)

    async def write_counters(
        self,
        counters: dict[str, int],
        now: float,
        node_rejects: dict[tuple[str, str], tuple[int, int]] | None = None,
        *,
        keep_quarantine: int | None = None,
        keep_node_rejects: int | None = None,
    ) -> int:
        """Replace the stored counters with the collector's current ones; add node rejects;
        given ``keep_quarantine``, keep only that many newest quarantined messages, and
        given ``keep_node_rejects``, the (node, reason) pairs rejected most recently (names
        come from topics: a broker letting anyone write any node's topic would otherwise grow
        the table with every invented name). One transaction, in one call to the store's thread
        (the writer's counters flush was three, each a commit, 48-122 ms of stall between
        two sample batches at 5,000 samples/s: ``bench/bench_ingest_stall.py``). Returns how
        many quarantined messages went."""
        counter_rows = [(k, v, now) for k, v in counters.items()]
        reject_rows = [(n, r, c, t) for (n, r), (c, t) in (node_rejects or {}).items()]

        def work(tx: Tx) -> int:
            if counter_rows:
                tx.insert_many(_COUNTERS_UPSERT, counter_rows)
            if reject_rows:  # one statement a row: each key once, counts added
                tx.executemany(_NODE_REJECTS_ADD, reject_rows)
            trimmed = 0
            if keep_quarantine is not None:
                trimmed = tx.execute(_TRIM_QUARANTINE, (keep_quarantine,))
            if keep_node_rejects is not None:
                tx.execute(_TRIM_NODE_REJECTS, ((1 << 62), keep_node_rejects))
            return trimmed

        return await self.transact("writing counters", work)

    async def delete_older_than(self, cutoff_ms: int, chunk_rows: int) -> int:
        """Delete samples that arrived before ``cutoff_ms``: at most ``chunk_rows`` rows,
        after (PostgreSQL) dropping the day partitions wholly before it (one holding late
        arrivals keeps them in a new partition of the day, :mod:`collector.store.pgdays`).

        Small chunks keep each write transaction short, so ingestion never stalls behind
        retention. The oldest arrivals go first, found through the ``received_ms`` index.
        A dropped partition counts the rows the planner estimates it held.
        """
        try:
            dropped = await self._db.drop_days_before(cutoff_ms, chunk_rows)
        except Exception as exc:
            raise await self._failed("dropping old partitions", exc) from exc
        return dropped + await self._delete(
            "DELETE FROM samples WHERE (node, ts_ms) IN (SELECT node, ts_ms FROM samples "
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

    async def _delete(self, sql: str, params: Sequence[Any], what: str) -> int:
        """Run one DELETE in its own transaction; return how many rows went."""
        async with self.transaction(what):
            return await self.execute(sql, params)

    async def meta(self, key: str) -> str | None:
        """A fact the collector stored with :meth:`write_batch` (``meta=``), or ``None``."""
        rows = await self.fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    # -- reader side ---------------------------------------------------------------------

    async def run(self, query: Query[T], *, build_in_thread: bool = False) -> T:
        """A query (:mod:`collector.store.query`) on this connection: the async counterpart
        of :func:`collector.store.query.run`, the only one. ``build_in_thread``: what the
        rows become is made in a worker thread (a large answer: the event loop goes on)."""
        results = [await self.fetchall(sql, p) for sql, p in query.statements]
        if build_in_thread:
            return await asyncio.to_thread(query.build, results)
        return query.build(results)

    async def read_aside(self, read: Callable[[StoreReader], T]) -> T:
        """``read`` run in a worker thread on a read-only connection of its own
        (:class:`~collector.store.reader.StoreReader`: one snapshot for all it reads), not on
        this store's connection, whose one thread writes every batch.

        For a large periodic read beside ingestion (the usage ledger's). On the writer's
        connection it held every commit for as long as it took, and sqlite3 gives up the GIL
        around each row's step: with the event loop validating samples, every row waited for
        the GIL again. A 12,500-row read that takes 52-130 ms alone took 1.24 s during a
        drain, a 1.24 s gap between two commits."""

        def work() -> T:
            with StoreReader(self.path) as reader:
                return read(reader)

        return await asyncio.to_thread(work)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a read query and return all rows (by index or name)."""
        try:
            return await self._db.call(self._db.fetchall, sql, params)
        except StoreError:
            raise
        except Exception as exc:
            raise self._read_failed(exc) from exc

    def _read_failed(self, exc: Exception) -> Exception:
        """The :class:`StoreError` of a failed read (``exc`` itself when it is not the
        store's error: a bug, with its traceback)."""
        if isinstance(exc, sqlite3.Error):
            return StoreError(f"query failed: {exc}")
        kind = self._db.kind(exc)
        if kind == "refused" and not isinstance(exc, _db_errors(self._db)):
            return exc
        first = str(exc).strip().splitlines()
        # A reader whose server is away: this question fails, the next one reconnects.
        return StoreError(
            f"query failed on {str(self.path)!r}: {first[0] if first else exc!r}",
            fatal=kind == "fatal",
            unavailable=kind == "unavailable",
        )


_RECEIVED_MS: Final = operator.attrgetter("received_ms")


@dataclass(slots=True)
class _TemplateUses:
    """The templates one batch names (:meth:`Store._payloads`), for :meth:`Store.write_batch`
    to remember once it committed."""

    ms: int
    """When they were used: the batch's latest ``received_ms``."""
    ids: list[int] = field(default_factory=list)
    """Every template id the batch names."""
    looked_up: dict[bytes, int] = field(default_factory=dict)
    """Templates written or refreshed in the batch's transaction, by body: their ids."""
    by_node: dict[str, _NodeTemplate] = field(default_factory=dict)
    """Each node's template in the batch, with its id and head, where the batch did not
    name them all as the nodes' last batches did (:attr:`Store._by_node`)."""


def _db_errors(db: _Sqlite | PgBackend) -> tuple[type[BaseException], ...]:
    if isinstance(db, _Sqlite):
        return (sqlite3.Error,)
    import psycopg  # noqa: PLC0415 - loaded already by the backend

    return (psycopg.Error, OverflowError)
