"""Opening the store: the one place a connection is made, and the errors it says.

Every connection to the store comes from here: the collector's writer and its read-only
helpers (:func:`open_async`, aiosqlite) and every command (:func:`open_sync`, stdlib
``sqlite3``: no event loop for one question). The busy timeout and the writer's pragmas are
decided here once, and so are the lines an operator reads when the store is missing, is not
a capwatch store, or refuses a statement (:func:`missing`, :func:`not_capwatch`,
:func:`refused`).

aiosqlite is imported only by :func:`open_async`, so a command that imports this module
pays for none of the writer's dependencies.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from shared.errors import StoreError

if TYPE_CHECKING:
    import aiosqlite

__all__ = [
    "BUSY_TIMEOUT_S",
    "Synchronous",
    "missing",
    "not_capwatch",
    "open_async",
    "open_failed",
    "open_sync",
    "refused",
]

Synchronous = Literal["full", "normal"]

BUSY_TIMEOUT_S: Final = 5.0
"""How long any connection waits for another's write lock before it gives up."""


def missing(path: Path) -> StoreError:
    """The store at ``path`` does not exist (a command never creates it)."""
    return StoreError(
        f"no capwatch database at {str(path)!r}: start `collector run` first or pass "
        "--db / CAPWATCH_DB_PATH"
    )


def not_capwatch(path: Path) -> StoreError:
    """``path`` is an SQLite file without the capwatch schema (empty or foreign)."""
    return StoreError(
        f"{str(path)!r} is not a capwatch database (or an empty one): point --db / "
        "CAPWATCH_DB_PATH at the collector's database; `collector run` creates it"
    )


def open_failed(path: Path, exc: BaseException, *, creating: bool = False) -> StoreError:
    """The store at ``path`` could not be opened (or, ``creating``, created and migrated)."""
    if isinstance(exc, sqlite3.Error):
        fix = (
            ": set db_path (--db / CAPWATCH_DB_PATH) to a file in a folder this user can write"
            if creating
            else ""
        )
        return StoreError(f"cannot open database {str(path)!r}: {exc}{fix}")
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return StoreError(f"cannot open database {str(path)!r}: {detail}")


def refused(path: Path, exc: BaseException, *, doing: str, no_table: str | None) -> StoreError:
    """A statement the store refused, as one line: ``doing`` says what was being done
    (``cannot write``, ``query failed on``); ``no_table`` completes the error when the store
    predates a table (not yet migrated), ``None``: it is then not a capwatch store."""
    if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
        if no_table is None:
            return not_capwatch(path)
        return StoreError(f"{str(path)!r} {no_table}")
    if isinstance(exc, OverflowError):  # a parameter past SQLite's 64-bit integers
        return StoreError(f"a value is too large for the store {str(path)!r}: {exc}")
    return StoreError(f"{doing} {str(path)!r}: {exc}")


def _existing(path: Path, *, write: bool) -> str:
    """What to connect to for the existing store at ``path``: the path, or a read-only URI."""
    if not path.is_file():
        raise missing(path)
    return str(path) if write else f"{path.resolve().as_uri()}?mode=ro"  # escapes ? and #


def open_sync(path: Path, *, write: bool) -> sqlite3.Connection:
    """A command's connection to the existing store at ``path``: autocommit (the caller
    says ``BEGIN``), the busy timeout, rows as :class:`sqlite3.Row`; read-only unless
    ``write``. :class:`StoreError` with the fix when there is none or it cannot be opened."""
    target = _existing(path, write=write)
    try:
        conn = sqlite3.connect(target, uri=not write, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise open_failed(path, exc) from exc
    conn.row_factory = sqlite3.Row
    return conn


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
