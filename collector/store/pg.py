"""The PostgreSQL backend: connections, error classes, samples by COPY, day partitions.

Loaded only for a :class:`~collector.paths.PgTarget` (psycopg is imported here and
nowhere else). Each handle of the store layer has its PostgreSQL side here:

* :class:`PgSync` — a command's connection (:class:`~collector.store.reader.StoreReader`,
  :class:`~collector.store.command.Command`): autocommit until ``begin``; a read is one
  ``REPEATABLE READ, READ ONLY`` snapshot; a write takes the commands' advisory lock first,
  so two commands never interleave (what ``BEGIN IMMEDIATE`` does on SQLite).
* :class:`PgBackend` — the collector's :class:`~collector.store.db.Store` on PostgreSQL: one
  synchronous psycopg connection driven from one worker thread (as aiosqlite drives
  sqlite3), so a batch's COPY runs without an ``await`` per row. Samples go by binary
  ``COPY`` into a temporary table, then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``
  (a redelivered sample is a duplicate, not an error). The batch is acknowledged after the
  commit, as on SQLite.
* Day partitions: ``samples`` is range-partitioned on ``ts_ms`` (the sample's own time; the
  unique ``(node, ts_ms)`` key that drops duplicates must hold the partition key), one
  partition per UTC day (``samples_dYYYYMMDD``), created ahead for the next days and on
  demand before a batch holding a sample of a day without one (validation bounds a
  sample's time to the retention window and the allowed clock skew, so that is a bounded
  set of days). Retention drops the partitions whose whole day is past the window, then
  trims the oldest partial day in chunks like SQLite does. It goes by arrival, as on
  SQLite: a day's late arrivals (a spool replayed after an outage) stay, moved into the
  day's new partition as its old one is dropped, all under ``samples``' lock, so a sample
  another collector is inserting meanwhile is never dropped with the day.

Errors are classed once (:func:`classify`): ``unavailable`` (the server restarted, the
connection broke, a failover left a read-only standby: reconnect and try again, nothing was
committed), ``fatal`` (the store cannot take writes: disk full, permissions) or a refused
batch (the data: bisect it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg.types.numeric import FloatLoader

from collector.paths import PgTarget
from collector.store.dialect import (
    Dialect,
    Row,
    distinct_runs,
    pg_row_factory,
    pg_sql,
    upsert_key,
)
from collector.store.errors import BUSY_TIMEOUT_S, open_failed
from collector.store.leader import CHECK_TOKEN_SQL, ROLE, not_leader
from collector.store.writes import MAX_ROWS_PER_STATEMENT
from shared.errors import StoreError
from shared.logging import get_logger

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DAY_MS",
    "PgBackend",
    "PgSync",
    "classify",
    "connect_sync",
    "partition_name",
]

log = get_logger("store")

T = TypeVar("T")

DAY_MS: Final = 86_400_000
_COMMANDS_LOCK: Final = 0x63617077_00000001
"""Advisory lock every command transaction takes: commands queue instead of interleaving."""
_MIGRATE_LOCK: Final = 0x63617077_00000002
_PARTITION_LOCK: Final = 0x63617077_00000003
_FOLD_LOCK: Final = 0x63617077_00000004
"""Taken by a rollup fold for its transaction: folds of several collectors writing this
store one after another (a fold reads the packed GPU statistics of its buckets, merges
and writes them back; two at once would each write back only their own)."""
_AHEAD_DAYS: Final = 2
"""Partitions created ahead of today (a sample's day normally has one before it comes)."""
_DROP_LOCK_TIMEOUT_MS: Final = 1000
"""How long retention waits for ``samples``' lock to drop a day (:meth:`PgBackend._drop_day`):
every writer of the share group queues behind the wait (once a day), so it is short next to
their own ``lock_timeout`` (5 s), yet longer than a batch's transaction, which is what it
normally waits for (a batch of 4,000 samples at the 10,000 samples/s a collector stores)."""
_DROP_RETRY_S: Final = 30.0
"""After a wait that timed out (a long query holds ``samples``), retention tries to drop
days again only this much later, not at each chunk: writers are not queued again and again."""
_CONNECT_TIMEOUT_S: Final = 10
_MAX_PARAMS: Final = 65_535  # bind parameters of one statement (the protocol's 16 bits)

Kind = Literal["unavailable", "fatal", "refused"]

# SQLSTATE classes and codes (https://www.postgresql.org/docs/current/errcodes-appendix.html)
_UNAVAILABLE_CLASSES: Final = frozenset({"08", "57"})  # connection; operator intervention
_UNAVAILABLE_CODES: Final = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby after failover
        "53300",  # too_many_connections
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout, pg_cancel_backend)
    }
)
_FATAL_CLASSES: Final = frozenset({"53", "58", "XX", "F0"})  # resources, system, internal
_FATAL_CODES: Final = frozenset({"42501"})  # insufficient_privilege


def classify(exc: BaseException, conn: psycopg.Connection[Any] | None = None) -> Kind:
    """What an error means for the writer: try again after reconnecting, stop, or bisect."""
    if conn is not None and (conn.closed or conn.broken):
        return "unavailable"
    if isinstance(exc, psycopg.errors.CheckViolation) and "no partition" in str(exc):
        return "unavailable"  # another collector dropped the day meanwhile: ensure, again
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        code = getattr(exc, "sqlstate", None)
        if code is None:
            return "unavailable"
    code = getattr(exc, "sqlstate", None)
    if code is None:
        return "fatal" if isinstance(exc, MemoryError) else "refused"
    if code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES:
        return "unavailable"
    if code[:2] in _FATAL_CLASSES or code in _FATAL_CODES:
        return "fatal"
    return "refused"


def _connect(target: PgTarget, *, autocommit: bool, read_only: bool) -> psycopg.Connection[Any]:
    # jit off: the server compiles a statement whose estimated cost passes jit_above_cost
    # (and optimises and inlines past 500,000) at every execution, as no compiled code is
    # kept (https://www.postgresql.org/docs/current/jit-decision.html). Ours are index
    # descents planned per node, so the estimate grows with the fleet while the work stays
    # small: the fleet query at 12,500 nodes spent ~12 ms compiling for ~80 ms of work, and
    # ~300 ms once the estimate passed 500,000 (bench/bench_pg_fleet.py).
    options = f"-c lock_timeout={int(BUSY_TIMEOUT_S * 1000)} -c jit=off"
    if read_only:
        options += " -c default_transaction_read_only=on"
    kwargs: dict[str, Any] = {
        "autocommit": autocommit,
        "row_factory": pg_row_factory,
        "connect_timeout": _CONNECT_TIMEOUT_S,
        "application_name": "capwatch",
        "options": options,
    }
    password = target.password()
    if password is not None:
        kwargs["password"] = password
    try:
        conn = psycopg.connect(target.url, **kwargs)
    except psycopg.Error as exc:
        raise open_failed(target, exc) from exc
    # ``ts_ms / 1000.0``, ``avg(bigint)`` are numeric in PostgreSQL: read them as float, as
    # SQLite gives them (the schema has no numeric column, so nothing exact is lost).
    conn.adapters.register_loader("numeric", FloatLoader)
    return conn


def connect_sync(target: PgTarget, *, write: bool) -> PgSync:
    """A command's connection (autocommit until :meth:`PgSync.begin`)."""
    return PgSync(_connect(target, autocommit=True, read_only=not write))


class PgSync:
    """:class:`~collector.store.connect.SyncConn` over psycopg; rows are :class:`PgRow`."""

    dialect: Dialect = "postgresql"
    errors: tuple[type[BaseException], ...] = (psycopg.Error, OverflowError)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """One statement (``?`` placeholders)."""
        return self.raw.execute(pg_sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement over ``rows``."""
        with self.raw.cursor() as cur:
            cur.executemany(pg_sql(sql), [tuple(r) for r in rows])

    def begin(self, *, write: bool) -> None:
        """A read snapshot, or a write transaction holding the commands' lock."""
        if write:
            self.raw.execute("BEGIN")
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (_COMMANDS_LOCK,))
        else:
            self.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    def commit(self) -> None:
        """Commit the open transaction."""
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        """Roll back the open transaction."""
        self.raw.execute("ROLLBACK")

    def close(self) -> None:
        """Close (an open transaction is rolled back)."""
        self.raw.close()

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (or failed and not yet rolled back)."""
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def has_table(self, name: str) -> bool:
        """Whether the store has table ``name`` (in the connection's schema)."""
        return _has_table(self.raw, name)

    def columns(self, table: str) -> set[str]:
        """The column names of ``table`` (empty: no such table)."""
        return _columns(self.raw, table)


def _has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    cur = conn.execute(
        "SELECT 1 FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (name,),
    )
    return cur.fetchone() is not None


def _columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    cur = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    )
    return {r[0] for r in cur.fetchall()}


def partition_name(day: int) -> str:
    """The partition of UTC day ``day`` (days since 1970-01-01): ``samples_dYYYYMMDD``."""
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return f"samples_d{date:%Y%m%d}"


def _day_of(name: str) -> int | None:
    if not name.startswith("samples_d") or len(name) != 17:
        return None
    try:
        date = dt.datetime.strptime(name[9:], "%Y%m%d").replace(tzinfo=dt.UTC).date()
    except ValueError:
        return None
    return (date - dt.date(1970, 1, 1)).days


_SAMPLE_TYPES: Final = (
    "text",  # node
    "int8",  # ts_ms
    "int8",  # seq
    "int8",  # received_ms
    "float8",  # interval_s
    "float8",  # cpu_pct
    "int8",  # mem_used_bytes
    "int8",  # mem_total_bytes
    "int8",  # gpu_count
    "float8",  # gpu_util_pct
    "int8",  # gpu_mem_used_bytes
    "float8",  # gpu_power_w
    "float8",  # cpu_power_w
    "bytea",  # payload
    "int8",  # payload_dict
    "int8",  # epoch
    "float8",  # node_power_w
    "text",  # node_power_source
)


class PgBackend:
    """The collector's connection to a PostgreSQL store (see the module docstring).

    Every statement runs in this backend's own worker thread (:meth:`call`); the event loop
    only awaits the result. The statements are synchronous methods (a
    :class:`~collector.store.writes.Tx`), so a whole transaction can run in one call.
    """

    dialect: Dialect = "postgresql"
    max_variables: int = _MAX_PARAMS
    nan_is_null: bool = False

    def __init__(self, target: PgTarget, *, write: bool, sample_columns: str) -> None:
        self.target = target
        self.write = write
        self._columns = sample_columns
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="capwatch-pg")
        self._days: set[int] = set()
        """Days known to have a partition (reloaded after a reconnect)."""
        self._drop_retry_at = 0.0
        """Retention drops no day before this (``time.monotonic()``; :data:`_DROP_RETRY_S`)."""

    # -- plumbing ----------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in this backend's thread, where every statement runs (the store's
        async methods are this around the sync ones below; a whole transaction can be one
        call: :meth:`~collector.store.db.Store.transact`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args))

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The open connection."""
        if self._conn is None:
            raise StoreError(f"the store {str(self.target)!r} is not connected", fatal=True)
        return self._conn

    async def open(self) -> None:
        """Connect (:class:`StoreError` with the server's reason when it cannot)."""
        await self.call(self._open)

    def _open(self) -> None:
        # Writer: transactions begin implicitly and end with commit/rollback, as on SQLite.
        self._conn = _connect(self.target, autocommit=not self.write, read_only=not self.write)
        self._days.clear()

    async def reconnect(self) -> None:
        """Drop the connection and open a new one."""
        await self.call(self._reconnect)

    def _reconnect(self) -> None:
        self._close_conn()
        self._open()
        if self.write and _has_table(self.conn, "samples"):
            self._prepare_copy()
            self.conn.commit()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    async def close(self) -> None:
        """Close the connection and the worker thread."""
        with contextlib.suppress(RuntimeError):  # the loop is closing: close here
            await self.call(self._close_conn)
        self._close_conn()
        self._thread.shutdown(wait=True)

    def kind(self, exc: BaseException) -> Kind:
        """What ``exc`` means (:func:`classify`), with this connection's state."""
        return classify(exc, self._conn)

    @staticmethod
    def hint(exc: BaseException) -> str:
        """What an operator can do about a failed write, where we can tell."""
        code = getattr(exc, "sqlstate", None) or ""
        if code == "53100":
            return " (the database server's disk is full: free space there)"
        if code == "42501":
            return " (grant the collector's role what it lacks: see deploy/README.md)"
        if code == "25006":
            return " (the server is a read-only standby: point store.url at the primary)"
        return ""

    # -- statements: synchronous, in this backend's thread (:meth:`call`) ----------------

    def begin(self) -> None:
        """A write transaction: psycopg opens it at its first statement."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement inside the open transaction; rows changed."""
        cur = self.conn.execute(pg_sql(sql), tuple(params))
        return max(cur.rowcount, 0)

    def returning(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One ``... RETURNING`` statement; its rows."""
        return self.conn.execute(pg_sql(sql), tuple(params)).fetchall()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement over ``rows`` (pipelined by psycopg)."""
        batch = [tuple(r) for r in rows]
        if batch:
            with self.conn.cursor() as cur:
                cur.executemany(pg_sql(sql), batch)

    def insert_many(
        self,
        statement: tuple[str, int, str],
        rows: Sequence[tuple[Any, ...]],
        max_rows: int = MAX_ROWS_PER_STATEMENT,
    ) -> int:
        """``statement`` (head, columns, tail) over ``rows``, many rows per statement; an
        upsert's rows applied in order, as on SQLite, even where one key comes twice
        (:func:`~collector.store.dialect.distinct_runs`)."""
        head, ncols, tail = statement
        per = max(1, min(max_rows, self.max_variables // ncols))
        changed = 0
        for chunk in distinct_runs(rows, per, upsert_key(head, tail)):
            sql = _multi_row_pg(pg_sql(head), ncols, len(chunk), pg_sql(tail))
            cur = self.conn.execute(sql, [v for row in chunk for v in row])
            changed += max(cur.rowcount, 0)
        return changed

    def insert_array(self, statement: tuple[str, int, str], rows: npt.NDArray[np.object_]) -> None:
        """As :meth:`insert_many` for rows as a 2-D object array."""
        if len(rows):
            self.insert_many(statement, [tuple(r) for r in rows.tolist()])

    def lock_fold(self) -> None:
        """First in a rollup fold's transaction: wait for any other collector's fold."""
        self.execute("SELECT pg_advisory_xact_lock(?)", (_FOLD_LOCK,))

    def fetch_tuples(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """A read whose rows are plain tuples, inside the writer's transaction."""
        with self.conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(pg_sql(sql), tuple(params))
            return cur.fetchall()

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read; outside a transaction it ends at once (no snapshot left open). A reader
        whose connection broke reconnects once and asks again."""
        if self._conn is None and not self.write:
            self._reader_reconnect()  # the last try found the server away
        try:
            return self._fetch_once(sql, params)
        except psycopg.Error as exc:
            if self.write or self.kind(exc) != "unavailable":
                raise
        self._reader_reconnect()  # a reader: the server restarted; ask again
        return self._fetch_once(sql, params)

    def _reader_reconnect(self) -> None:
        """A reader's reconnect: still away, this question fails (not fatal: the
        evaluator's next cycle asks again)."""
        try:
            self._reconnect()
        except StoreError as exc:
            raise StoreError(str(exc), fatal=False, unavailable=True) from exc

    def _fetch_once(self, sql: str, params: Sequence[Any]) -> list[Row]:
        conn = self.conn
        idle = conn.info.transaction_status == TransactionStatus.IDLE
        rows = conn.execute(pg_sql(sql), tuple(params)).fetchall()
        if idle and not conn.autocommit:
            conn.commit()
        return rows

    def commit(self) -> None:
        """Commit the open transaction (once it returns, the rows are durable)."""
        self.conn.commit()

    def rollback(self) -> None:
        """Roll back the open transaction."""
        self.conn.rollback()

    def check_fence(self, token: int) -> None:
        """First in a leader's transaction: :class:`~shared.errors.NotLeaderError` unless
        ``token`` still holds the lease (the row then stays share-locked against a takeover
        until this transaction ends; see :mod:`collector.store.leader`)."""
        if self.conn.execute(CHECK_TOKEN_SQL, {"name": ROLE, "token": token}).fetchone() is None:
            raise not_leader(token)

    # -- schema ------------------------------------------------------------------------

    async def migrate(self, migrations: Sequence[tuple[str, str]]) -> list[str]:
        """Apply the migrations not yet applied, under a lock (collectors starting together
        migrate once); return the names applied now."""
        return await self.call(self._migrate, migrations)

    def _migrate(self, migrations: Sequence[tuple[str, str]]) -> list[str]:
        conn = self.conn
        applied: list[str] = []
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
            for name, text in migrations:
                if name in done:
                    continue
                conn.execute(text.encode())  # several statements, no parameters
                conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)",
                    (name, time.time()),
                )
                applied.append(name)
            conn.commit()
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        self._prepare_copy()
        # Commit before taking the partition lock: CREATE TEMP TABLE ... (LIKE samples) holds
        # samples' ACCESS SHARE lock until then, and a collector starting beside this one,
        # holding the partition lock, waits on it to add a day (a deadlock, seen with two
        # collectors started at once on an empty database).
        conn.commit()
        self._ensure_days(range(_today(), _today() + _AHEAD_DAYS + 1))
        conn.commit()
        return applied

    def _prepare_copy(self) -> None:
        self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS samples_in "
            "(LIKE samples INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )

    # -- samples -----------------------------------------------------------------------

    async def prepare_samples(self, days: set[int]) -> None:
        """Before a batch's transaction: a partition for each of ``days`` (in a short
        transaction of its own, so the batch never holds the partition lock)."""
        if days - self._days:
            await self.call(self._ensure_days, sorted(days))

    def _ensure_days(self, days: Iterable[int]) -> None:
        conn = self.conn
        wanted = [d for d in days if d not in self._days]
        if not wanted:
            return
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
            existing = self._partition_days()
            for day in wanted:
                if day in existing:
                    continue
                conn.execute(_create_partition(day))
                existing.add(day)
                log.info("partition_created", partition=partition_name(day))
            conn.commit()
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        self._days = existing

    def _partition_days(self) -> set[int]:
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'samples'::regclass"
        ).fetchall()
        return {d for (name,) in rows if (d := _day_of(name)) is not None}

    def insert_samples(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Inside the batch's transaction: COPY ``rows`` in, keep the new ones; how many."""
        if not rows:
            return 0
        conn = self.conn
        with conn.cursor() as cur:
            self._copy_in(cur, rows)
            cur.execute(
                f"INSERT INTO samples ({self._columns}) SELECT {self._columns} FROM samples_in "
                "ON CONFLICT DO NOTHING"
            )
            return max(cur.rowcount, 0)  # samples_in empties at the commit

    def insert_samples_new(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, int]]:
        """As :meth:`insert_samples`; the ``(node, ts_ms)`` of the rows that were new."""
        if not rows:
            return []
        conn = self.conn
        with conn.cursor() as cur:
            self._copy_in(cur, rows)
            cur.execute(
                f"INSERT INTO samples ({self._columns}) SELECT {self._columns} FROM samples_in "
                "ON CONFLICT DO NOTHING RETURNING node, ts_ms"
            )
            return [(r[0], r[1]) for r in cur.fetchall()]  # samples_in empties at the commit

    def _copy_in(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        with cur.copy(f"COPY samples_in ({self._columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_SAMPLE_TYPES))
            for row in rows:
                copy.write_row(row)

    async def drop_days_before(self, cutoff_ms: int, move_max_rows: int) -> int:
        """Drop the partitions wholly before ``cutoff_ms`` (see :meth:`_drop_day`); return
        their estimated rows (the planner's count, not a scan)."""
        return await self.call(self._drop_days_before, cutoff_ms, move_max_rows)

    def _drop_days_before(self, cutoff_ms: int, move_max_rows: int) -> int:
        conn = self.conn
        rows = conn.execute(
            "SELECT c.relname, greatest(c.reltuples, 0)::bigint FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'samples'::regclass"
        ).fetchall()
        conn.commit()
        dropped = 0
        for name, estimate in rows:
            day = _day_of(name)
            if day is None or (day + 1) * DAY_MS > cutoff_ms:
                continue
            if time.monotonic() < self._drop_retry_at:
                break
            try:
                moved = (
                    self._drop_day(name, day, cutoff_ms, move_max_rows)
                    if self._worth_dropping(name, cutoff_ms, move_max_rows)
                    else None
                )
            except psycopg.errors.UndefinedTable:
                conn.rollback()  # another collector of the share group dropped it meanwhile
                self._days.discard(day)
                continue
            except psycopg.errors.LockNotAvailable:
                conn.rollback()
                self._drop_retry_at = time.monotonic() + _DROP_RETRY_S
                log.warning(
                    "partition_drop_deferred",
                    partition=name,
                    lock_wait_ms=_DROP_LOCK_TIMEOUT_MS,
                    retry_in_s=_DROP_RETRY_S,
                    hint="a transaction held samples longer (a long query, another "
                    "collector's batch): its rows go by the chunked delete meanwhile",
                )
                break
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise
            if moved is None:
                continue
            if not moved:
                self._days.discard(day)
            dropped += max(int(estimate) - moved, 0)
            log.info("partition_dropped", partition=name, rows_estimate=int(estimate), kept=moved)
        if dropped or _today() + _AHEAD_DAYS not in self._days:
            self._ensure_days(range(_today(), _today() + _AHEAD_DAYS + 1))
        return dropped

    def _worth_dropping(self, name: str, cutoff_ms: int, move_max_rows: int) -> bool:
        """Whether day partition ``name`` (wholly before ``cutoff_ms``) may be dropped by
        :meth:`_drop_day`, as far as the rows committed now tell (no lock: only a day that
        will do takes the lock): at most ``move_max_rows`` of its rows arrived since the
        cutoff, and (when some did) some arrived before it, so the drop frees something."""
        conn = self.conn
        part = pgsql.Identifier(name)
        (late,) = conn.execute(
            pgsql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {} WHERE received_ms >= %s LIMIT %s) AS late"
            ).format(part),
            (cutoff_ms, move_max_rows + 1),
        ).fetchone() or (0,)
        worth = late <= move_max_rows and (late == 0 or self._has_rows_before(part, cutoff_ms))
        conn.commit()
        return bool(worth)

    def _has_rows_before(self, part: pgsql.Identifier, cutoff_ms: int) -> bool:
        """Whether partition ``part`` holds a row that arrived before ``cutoff_ms``."""
        (found,) = self.conn.execute(
            pgsql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE received_ms < %s)").format(part),
            (cutoff_ms,),
        ).fetchone() or (False,)
        return bool(found)

    def _drop_day(self, name: str, day: int, cutoff_ms: int, move_max_rows: int) -> int | None:
        """Drop day partition ``name``, keeping its rows that arrived at or after
        ``cutoff_ms`` (late arrivals: retention goes by arrival, as on SQLite), in one
        transaction; return how many were kept (``None``: the day stays as it is).

        The check and the drop are one decision: the transaction first takes ``samples``'
        ACCESS EXCLUSIVE lock (which ``DROP TABLE`` of a partition takes anyway:
        https://www.postgresql.org/docs/current/ddl-partitioning.html#DDL-PARTITIONING-DECLARATIVE-MAINTENANCE),
        so a sample another collector of the share group is inserting into the day is
        committed before it (then seen and kept) or waits for the end (then inserted into
        the day's new partition, or into one its writer creates again). The parent's lock
        is the first this transaction takes, as inserts and queries take it before their
        partitions' (one order, no deadlock:
        https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-DEADLOCKS),
        and it is waited for at most :data:`_DROP_LOCK_TIMEOUT_MS` (``lock_timeout``), as
        writers queue behind the wait. The late rows (at most ``move_max_rows``) go to the
        batch's staging table (``samples_in``, empty outside a batch and emptied at the
        commit), the partition is dropped, created again, and they are inserted back: a day
        holding a few late arrivals costs one short transaction, not a chunked delete of
        its rows (``bench/bench_pg_retention.py``).
        """
        conn = self.conn
        conn.execute(f"SET LOCAL lock_timeout = {_DROP_LOCK_TIMEOUT_MS}")
        conn.execute("LOCK TABLE ONLY samples IN ACCESS EXCLUSIVE MODE")
        (exists,) = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() or (0,)
        if not exists:
            conn.rollback()  # another collector of the share group dropped it meanwhile
            return None
        columns = pgsql.SQL(", ").join(map(pgsql.Identifier, sorted(_columns(conn, "samples"))))
        part = pgsql.Identifier(name)
        moved = conn.execute(
            pgsql.SQL(
                "INSERT INTO samples_in ({}) SELECT {} FROM {} WHERE received_ms >= %s LIMIT %s"
            ).format(columns, columns, part),
            (cutoff_ms, move_max_rows + 1),
        ).rowcount
        if moved > move_max_rows:  # more came since the check: chunked deletes trim it
            conn.rollback()
            return None
        if moved and not self._has_rows_before(part, cutoff_ms):
            conn.rollback()  # every row is late (another collector moved them): nothing to free
            return None
        conn.execute(pgsql.SQL("DROP TABLE {}").format(part))
        if moved:
            conn.execute(_create_partition(day))
            conn.execute(
                pgsql.SQL("INSERT INTO samples ({}) SELECT {} FROM samples_in").format(
                    columns, columns
                )
            )
        conn.commit()
        return moved

    async def continue_identities(self, tables: Sequence[str]) -> None:
        """Each table's identity sequence continues after its largest ``id``."""
        await self.call(self._continue_identities, tables)

    def _continue_identities(self, tables: Sequence[str]) -> None:
        conn = self.conn
        for table in tables:
            conn.execute(
                pgsql.SQL(
                    "SELECT setval(pg_get_serial_sequence({}, 'id'), "
                    "coalesce(max(id), 0) + 1, false) FROM {}"
                ).format(pgsql.Literal(table), pgsql.Identifier(table))
            )
        conn.commit()

    async def size_bytes(self) -> int:
        """The database's size on disk (``pg_database_size``)."""
        rows = await self.call(self.fetchall, "SELECT pg_database_size(current_database())")
        return int(rows[0][0])


@functools.lru_cache(maxsize=64)
def _multi_row_pg(head: str, ncols: int, nrows: int, tail: str) -> str:
    one = "(" + ", ".join(["%s"] * ncols) + ")"
    return f"{head} VALUES {', '.join([one] * nrows)}{tail}"


def _create_partition(day: int) -> pgsql.Composed:
    """The statement creating day ``day``'s partition of ``samples`` (unless it exists)."""
    return pgsql.SQL(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF samples FOR VALUES FROM ({}) TO ({})"
    ).format(
        pgsql.Identifier(partition_name(day)),
        pgsql.Literal(day * DAY_MS),
        pgsql.Literal((day + 1) * DAY_MS),
    )


def _today() -> int:
    return int(time.time() // 86_400)
