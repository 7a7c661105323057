"""The collector's store on PostgreSQL: one connection in one worker thread, samples by COPY.

:class:`PgBackend` is :class:`~collector.store.db.Store`'s PostgreSQL side: one synchronous
psycopg connection driven from one worker thread (as aiosqlite drives sqlite3), so a
batch's COPY runs without an ``await`` per row. Samples go by binary ``COPY`` into a
temporary table (:data:`~collector.store.pgdays.STAGING`), then ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING`` (a redelivered sample is a duplicate, not an error). The batch is
acknowledged after the commit, as on SQLite. Beside it: how a connection is opened and its
errors classed (:mod:`collector.store.pgconn`), and the day partitions of ``samples``
(:mod:`collector.store.pgdays`), which this backend creates before a batch and drops for
retention.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from collector.paths import PgTarget
from collector.store.dialect import Dialect, Row, distinct_runs, pg_sql, upsert_key
from collector.store.leader import CHECK_TOKEN_SQL, ROLE, not_leader
from collector.store.migrations import refuse_newer
from collector.store.pgconn import FOLD_LOCK, MIGRATE_LOCK, Kind, classify, connect, has_table
from collector.store.pgdays import STAGING, DayPartitions
from collector.store.writes import MAX_ROWS_PER_STATEMENT
from shared.errors import StoreError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["PgBackend"]

T = TypeVar("T")

_MAX_PARAMS: Final = 65_535  # bind parameters of one statement (the protocol's 16 bits)


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
        self._days = DayPartitions()
        """The day partitions this connection knows of (forgotten at a reconnect)."""

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
        self._conn = connect(self.target, autocommit=not self.write, read_only=not self.write)
        self._days.forget()

    async def reconnect(self) -> None:
        """Drop the connection and open a new one."""
        await self.call(self._reconnect)

    def _reconnect(self) -> None:
        self._close_conn()
        self._open()
        if self.write and has_table(self.conn, "samples"):
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
        self.execute("SELECT pg_advisory_xact_lock(?)", (FOLD_LOCK,))

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
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
            refuse_newer(self.target, done, migrations)
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
        self._days.ensure_ahead(conn)
        conn.commit()
        return applied

    def _prepare_copy(self) -> None:
        self.conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} "
            "(LIKE samples INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )

    # -- samples -----------------------------------------------------------------------

    async def prepare_samples(self, days: set[int]) -> None:
        """Before a batch's transaction: a partition for each of ``days`` (in a short
        transaction of its own, so the batch never holds the partition lock)."""
        if self._days.missing(days):
            await self.call(self._ensure_days, sorted(days))

    def _ensure_days(self, days: Iterable[int]) -> None:
        self._days.ensure(self.conn, days)

    def insert_samples(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Inside the batch's transaction: COPY ``rows`` in, keep the new ones; how many."""
        if not rows:
            return 0
        conn = self.conn
        with conn.cursor() as cur:
            self._copy_in(cur, rows)
            cur.execute(
                f"INSERT INTO samples ({self._columns}) SELECT {self._columns} FROM {STAGING} "
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
                f"INSERT INTO samples ({self._columns}) SELECT {self._columns} FROM {STAGING} "
                "ON CONFLICT DO NOTHING RETURNING node, ts_ms"
            )
            return [(r[0], r[1]) for r in cur.fetchall()]  # samples_in empties at the commit

    def _copy_in(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        with cur.copy(f"COPY {STAGING} ({self._columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_SAMPLE_TYPES))
            for row in rows:
                copy.write_row(row)

    async def drop_days_before(self, cutoff_ms: int, move_max_rows: int) -> int:
        """Drop the partitions wholly before ``cutoff_ms``, keeping their late arrivals
        (:meth:`~collector.store.pgdays.DayPartitions.drop_before`); return their
        estimated rows (the planner's count, not a scan)."""
        return await self.call(self._drop_days_before, cutoff_ms, move_max_rows)

    def _drop_days_before(self, cutoff_ms: int, move_max_rows: int) -> int:
        return self._days.drop_before(self.conn, cutoff_ms, move_max_rows)

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
