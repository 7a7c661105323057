"""PostgreSQL connections: how capwatch opens one, what its errors mean, a command's handle.

Loaded only for a :class:`~collector.paths.PgTarget`; psycopg is imported by this module
and the two beside it (:mod:`collector.store.pg`, the collector's backend;
:mod:`collector.store.pgdays`, the day partitions), nowhere else. A command needs only
this one.

* :func:`connect` — every connection, set up alike: ``lock_timeout`` (the busy timeout, as
  on SQLite), ``jit`` off, read-only transactions for a reader, ``numeric`` read as float.
* :class:`PgSync` — a command's connection (:class:`~collector.store.reader.StoreReader`,
  :class:`~collector.store.command.Command`): autocommit until ``begin``; a read is one
  ``REPEATABLE READ, READ ONLY`` snapshot; a write takes the commands' advisory lock first,
  so two commands never interleave (what ``BEGIN IMMEDIATE`` does on SQLite).
* The advisory lock keys capwatch takes, all here so that no two mean the same key.

Errors are classed once (:func:`classify`): ``unavailable`` (the server restarted, the
connection broke, a failover left a read-only standby: reconnect and try again, nothing was
committed), ``fatal`` (the store cannot take writes: disk full, permissions) or a refused
batch (the data: bisect it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.numeric import FloatLoader

from collector.paths import PgTarget
from collector.store.dialect import Dialect, pg_row_factory, pg_sql
from collector.store.errors import BUSY_TIMEOUT_S, open_failed

__all__ = [
    "APPLICATION_NAME",
    "FOLD_LOCK",
    "MIGRATE_LOCK",
    "PARTITION_LOCK",
    "REBUILD_LOCK",
    "Kind",
    "PgSync",
    "classify",
    "columns",
    "connect",
    "connect_sync",
    "has_table",
]

_COMMANDS_LOCK: Final = 0x63617077_00000001
"""Advisory lock every command transaction takes: commands queue instead of interleaving."""
MIGRATE_LOCK: Final = 0x63617077_00000002  # collectors starting together migrate once
PARTITION_LOCK: Final = 0x63617077_00000003  # adding day partitions (collector.store.pgdays)
FOLD_LOCK: Final = 0x63617077_00000004
"""Taken by a rollup fold for its transaction: folds of several collectors writing this
store one after another (a fold reads the packed GPU statistics of its buckets, merges
and writes them back; two at once would each write back only their own)."""
REBUILD_LOCK: Final = 0x63617077_00000005
"""Taken (tried) by retention rebuilding a day partition of ``samples`` around its late rows
(:mod:`collector.store.pgdays`): one collector of a share group does it at a time."""
_CONNECT_TIMEOUT_S: Final = 10
APPLICATION_NAME: Final = "capwatch"
"""What every capwatch connection calls itself (``application_name``): ``collector
migrate`` finds the collectors and commands still connected to its target by it."""

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


def connect(target: PgTarget, *, autocommit: bool, read_only: bool) -> psycopg.Connection[Any]:
    """A connection to ``target`` as capwatch sets every one up (:class:`~shared.errors.StoreError`
    with the server's reason when it cannot connect)."""
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
        "application_name": APPLICATION_NAME,
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
    return PgSync(connect(target, autocommit=True, read_only=not write))


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
        return has_table(self.raw, name)

    def columns(self, table: str) -> set[str]:
        """The column names of ``table`` (empty: no such table)."""
        return columns(self.raw, table)


def has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    """Whether table ``name`` exists in the connection's schema."""
    cur = conn.execute(
        "SELECT 1 FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (name,),
    )
    return cur.fetchone() is not None


def columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    """The column names of ``table`` in the connection's schema (empty: no such table)."""
    cur = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    )
    return {r[0] for r in cur.fetchall()}
