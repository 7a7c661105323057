"""Opening the store: the one place a connection is made.

Every connection to the store comes from here: the collector's writer and its read-only
helpers (:func:`open_async`, aiosqlite) and every command (:func:`open_sync`: a
:class:`SyncConn`, stdlib ``sqlite3`` or, for a :class:`~collector.paths.PgTarget`,
psycopg through :mod:`collector.store.pgconn`; no event loop for one question). The writer's
pragmas are decided here once; the busy timeout and the lines an operator reads when the
store is missing, cannot be opened or refuses a statement come from
:mod:`collector.store.errors`, which the PostgreSQL module shares without importing this one.

aiosqlite is imported only by :func:`open_async`, psycopg only for a PostgreSQL store, so a
command that imports this module pays for none of the writer's dependencies.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from collector.store.dialect import Dialect
from collector.store.errors import (
    BUSY_TIMEOUT_S,
    missing,
    missing_column,
    missing_table,
    open_failed,
    wal_barred,
)
from collector.store.migrations import MIGRATIONS

if TYPE_CHECKING:
    import aiosqlite

    from collector.paths import StoreTarget

__all__ = [
    "SqliteSync",
    "SyncConn",
    "SyncCursor",
    "Synchronous",
    "bind_plainly",
    "foreign",
    "is_capwatch",
    "open_async",
    "open_sync",
]

Synchronous = Literal["full", "normal"]


class SyncCursor(Protocol):
    """What a statement leaves: rows changed, and its rows."""

    @property
    def rowcount(self) -> int: ...
    def fetchall(self) -> list[Any]: ...


class SyncConn(Protocol):
    """A command's connection, whatever the backend (:class:`SqliteSync`,
    :class:`collector.store.pgconn.PgSync`): autocommit until :meth:`begin`."""

    dialect: Dialect
    errors: tuple[type[BaseException], ...]
    """What its statements raise (the handles turn them into :class:`StoreError`)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> SyncCursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    def begin(self, *, write: bool) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...
    @property
    def in_transaction(self) -> bool: ...
    def has_table(self, name: str) -> bool: ...
    def columns(self, table: str) -> set[str]: ...


class SqliteSync:
    """:class:`SyncConn` over a stdlib :class:`sqlite3.Connection` (rows :class:`sqlite3.Row`)."""

    dialect: Dialect = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OverflowError)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One statement."""
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement over ``rows``."""
        self.raw.executemany(sql, rows)

    def begin(self, *, write: bool) -> None:
        """A read snapshot, or (``write``) the write lock now: two commands never interleave."""
        self.raw.execute("BEGIN IMMEDIATE" if write else "BEGIN")

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
        """Whether a transaction is open."""
        return self.raw.in_transaction

    def has_table(self, name: str) -> bool:
        """Whether the store has table ``name``."""
        rows = self.raw.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchall()
        return bool(rows)

    def columns(self, table: str) -> set[str]:
        """The column names of ``table`` (empty: no such table)."""
        return {
            r[1] for r in self.raw.execute("SELECT name, name FROM pragma_table_info(?)", (table,))
        }


def _existing(path: Path, *, write: bool) -> str:
    """What to connect to for the existing store at ``path``: the path, or a read-only URI."""
    if not path.is_file():
        raise missing(path)
    return str(path) if write else f"{path.resolve().as_uri()}?mode=ro"  # escapes ? and #


def is_capwatch(conn: SyncConn) -> bool:
    """Whether the store behind ``conn`` is capwatch's, migrated to this version or not:
    its migrations' record holds the first one. A table named ``samples`` or ``nodes`` is no
    sign (another program's database may have one); an error reading the record is a
    foreign store (on PostgreSQL, after a failed statement, roll back first: it answers
    nothing else in that transaction)."""
    try:
        if not conn.has_table("schema_migrations"):
            return False
        rows = conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (MIGRATIONS[0][0],))
        return bool(rows.fetchall())
    except conn.errors:
        return False


def foreign(conn: SyncConn, exc: BaseException) -> bool:
    """Whether ``exc``, a statement the store behind ``conn`` refused, says it is no
    capwatch store: a table or column missing from a store without capwatch's record
    (:func:`is_capwatch`). Missing from a capwatch store, it is one not yet migrated to this
    version. Rolls the failed transaction back first, to ask: the caller gives up on it. The
    one test of the read commands (:class:`~collector.store.reader.StoreReader`) and the
    write commands (:class:`~collector.store.command.Command`)."""
    if not (missing_table(exc) or missing_column(exc)):
        return False
    with contextlib.suppress(*conn.errors):
        if conn.in_transaction:
            conn.rollback()
    return not is_capwatch(conn)


def open_sync(path: StoreTarget, *, write: bool) -> SyncConn:
    """A command's connection to the existing store at ``path``: autocommit (the caller
    says :meth:`SyncConn.begin`), the busy timeout, rows by index or name; read-only unless
    ``write``. :class:`StoreError` with the fix when there is none or it cannot be opened."""
    if not isinstance(path, Path):
        from collector.store.pgconn import connect_sync  # noqa: PLC0415 - psycopg: PostgreSQL only

        return connect_sync(path, write=write)
    target = _existing(path, write=write)
    try:
        conn = sqlite3.connect(target, uri=not write, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise open_failed(path, exc) from exc
    try:  # the first read opens the WAL's -shm: a read-only folder is said here, with its fix
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        barred = wal_barred(path, exc, write=write)
        if barred is not None:
            conn.close()
            raise barred from exc
        # anything else (a file that is no database) is for the caller's is_capwatch to say
    conn.row_factory = sqlite3.Row
    return SqliteSync(conn)


_NO_ADAPTER: Final[dict[object, None]] = {}


def bind_plainly() -> None:
    """Let :mod:`sqlite3` bind ``bytes`` and ``None`` without looking for an adapter.

    Python 3.11's ``sqlite3`` binds ``int``, ``float`` and ``str`` parameters as they are,
    but asks every ``bytes`` and ``None`` parameter for an adapter first: it looks up
    ``__adapt__`` on its ``PrepareProtocol`` type, which raises (and formats) an
    ``AttributeError`` that it then clears, and ``__conform__`` on the value: ~3,100
    instructions a parameter, more than SQLite's own work on it
    (https://github.com/python/cpython/blob/3.11/Modules/_sqlite/microprotocols.c,
    ``pysqlite_microprotocols_adapt``, called by ``bind_parameters`` in ``cursor.c``). An
    adapter registered for their type is found first, in a dictionary (~1,300 instructions,
    callgrind); these return the value itself (``bytes(b)`` is ``b``; the empty
    dictionary's ``get`` is ``None``), so the same values are bound
    (``bench/bench_write.py``: a sample row has a payload and often three ``None``).
    Process-wide and idempotent; adapters of other types (none in capwatch) are
    untouched."""
    sqlite3.register_adapter(bytes, bytes)
    sqlite3.register_adapter(type(None), _NO_ADAPTER.get)


async def open_async(
    path: Path,
    *,
    write: bool,
    synchronous: Synchronous = "full",
    factory: type[sqlite3.Connection] = sqlite3.Connection,
) -> aiosqlite.Connection:
    """The collector's connection: with ``write``, the writer's own (the file and its folder
    are created; WAL, so commands read while it writes; ``synchronous``: FULL puts a commit
    on disk before the broker hears it is stored), else a read-only one to an existing
    store. Rows are :class:`sqlite3.Row`. Opening errors are :class:`StoreError`."""
    import aiosqlite  # noqa: PLC0415 - the writer's dependency, not a command's

    bind_plainly()

    target = path if write else _existing(path, write=False)
    pragmas = [f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}"]
    if write:
        pragmas = [
            "PRAGMA journal_mode = WAL",
            f"PRAGMA synchronous = {synchronous.upper()}",
            *pragmas,
            "PRAGMA temp_store = MEMORY",
            "PRAGMA cache_size = -65536",
        ]
    conn: aiosqlite.Connection | None = None
    try:
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Opened once here first: aiosqlite starts its thread before it connects and, when
        # the connect fails, only asks the thread to stop; a command that then returns its
        # one-line error closes the loop under that thread, which printed two 'Event loop is
        # closed' tracebacks after the line (`collector run --db DIRECTORY`).
        sqlite3.connect(target, uri=not write).close()
        conn = await aiosqlite.connect(target, uri=not write, factory=factory)
        conn.row_factory = sqlite3.Row
        for pragma in pragmas:
            await conn.execute(pragma)
    except (sqlite3.Error, OSError) as exc:
        if conn is not None:
            await conn.close()
        raise open_failed(path, exc, creating=write) from exc
    except BaseException:
        if conn is not None:
            await conn.close()
        raise
    return conn
