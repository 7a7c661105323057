"""What the store says when it cannot be used, whatever the backend: one
:class:`~shared.errors.StoreError` line each, built here once.

:func:`missing` (no store at the path; a command never creates one), :func:`not_capwatch`
(an SQLite file without our tables), :func:`open_failed` (cannot be opened, or created) and
:func:`refused` (a statement the store refused: what was being done, the table or column a
store not yet migrated lacks (:func:`not_migrated`), a value past 64-bit integers).
:data:`BUSY_TIMEOUT_S` is the wait after which another connection's write lock becomes such
an error, on both backends.

Shared by :mod:`collector.store.connect` (SQLite, and the opener of every connection) and
:mod:`collector.store.pgconn` (PostgreSQL), which the opener imports: so this sits below both.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Final

from shared.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from collector.paths import StoreTarget

__all__ = [
    "BUSY_TIMEOUT_S",
    "folder",
    "missing",
    "missing_column",
    "missing_table",
    "newer_schema",
    "not_capwatch",
    "not_migrated",
    "open_failed",
    "refused",
    "wal_barred",
    "write_barred",
]

BUSY_TIMEOUT_S: Final = 5.0
"""How long any connection waits for another's write lock before it gives up."""


def missing(path: StoreTarget) -> StoreError:
    """The store at ``path`` does not exist (a command never creates it)."""
    if isinstance(path, Path) and path.is_dir():
        return folder(path)
    return StoreError(
        f"no capwatch database at {str(path)!r}: start `collector run` first or pass "
        "--db / CAPWATCH_DB_PATH"
    )


def folder(path: Path) -> StoreError:
    """``path``, given as the SQLite store, is a folder (the state directory, say)."""
    return StoreError(
        f"{str(path)!r} is a folder, not a database file: give the file (--db "
        f"{path / 'capwatch.db'} / CAPWATCH_DB_PATH)"
    )


def not_capwatch(path: StoreTarget) -> StoreError:
    """``path`` is an SQLite file without the capwatch schema (empty or foreign)."""
    return StoreError(
        f"{str(path)!r} is not a capwatch database (or an empty one): point --db / "
        "CAPWATCH_DB_PATH at the collector's database; `collector run` creates it"
    )


def open_failed(path: StoreTarget, exc: BaseException, *, creating: bool = False) -> StoreError:
    """The store at ``path`` could not be opened (or, ``creating``, created and migrated)."""
    if not isinstance(path, Path):
        return StoreError(f"cannot open database {str(path)!r}: {_first_line(exc)}")
    if path.is_dir():
        return folder(path)
    if isinstance(exc, sqlite3.Error):
        fix = (
            ": set db_path (--db / CAPWATCH_DB_PATH) to a file in a folder this user can write"
            if creating
            else ""
        )
        return StoreError(f"cannot open database {str(path)!r}: {exc}{fix}")
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return StoreError(f"cannot open database {str(path)!r}: {detail}")


_READONLY: Final = 8
_CANTOPEN: Final = 14
"""SQLite's primary result codes (https://www.sqlite.org/rescode.html) a WAL reader gets
when it cannot create the ``-shm`` file (SQLITE_READONLY_DIRECTORY, SQLITE_CANTOPEN)."""


def wal_barred(path: Path, exc: sqlite3.Error, *, write: bool = False) -> StoreError | None:
    """The error, with its fix, when ``exc`` is a reader that could not create the WAL's
    ``-shm``/``-wal`` files beside ``path`` because its folder is not writable by this user
    (SQLite's own words, "attempt to write a readonly database" or "unable to open database
    file", say neither why nor what to do); ``None`` for any other error. SQLite reads a WAL
    database read-only when those files exist (a collector running keeps them) or can be
    created (https://www.sqlite.org/wal.html#readonly); ``immutable=1`` would read it
    without them, but it ignores a ``-wal`` left uncheckpointed and any writer that
    starts meanwhile, so a stale or torn answer: the fix is given instead.

    ``write``: a write command's connection (``pool create``, ``silence add``...), refused
    the same words when this user cannot write the folder, the file or its ``-shm``/``-wal``
    (a collector running created them as its own user): :func:`write_barred`."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code not in (_READONLY, _CANTOPEN):
        return None
    if write:
        return write_barred(path, exc)
    if os.access(path.parent, os.W_OK):
        return None
    return StoreError(
        f"cannot read database {str(path)!r}: {exc} (SQLite's WAL mode needs {path.name}-shm "
        f"and -wal beside it even to read, and this user cannot create them in "
        f"{str(path.parent)!r}): make that folder writable by this user (the collector's "
        "group, say), or copy the file (and its -wal) to a folder it can write and pass "
        "--db COPY"
    )


def write_barred(path: Path, exc: sqlite3.Error) -> StoreError | None:
    """The error, with its fix, when a write to the SQLite store at ``path`` failed because
    this user cannot write what SQLite writes: the file, its folder (where the journal, or
    in WAL mode the ``-shm`` and ``-wal`` files, are created) or those files when they exist;
    ``None`` when it can write them all (the error is then another one)."""
    written = {f"its folder {str(path.parent)!r}": path.parent, path.name: path}
    for end in ("-shm", "-wal"):
        written[path.name + end] = path.with_name(path.name + end)
    barred = [what for what, p in written.items() if p.exists() and not os.access(p, os.W_OK)]
    if not barred:
        return None
    return StoreError(
        f"cannot write database {str(path)!r}: {exc} (SQLite writes it, and {path.name}-shm "
        f"and -wal beside it, and this user cannot write {', '.join(barred)}): run the "
        "command as the collector's user, or make them writable by this user (the "
        "collector's group, say)"
    )


def refused(
    path: StoreTarget, exc: BaseException, *, doing: str, no_table: str | None, write: bool = False
) -> StoreError:
    """A statement the store refused, as one line: ``doing`` says what was being done
    (``cannot write``, ``query failed on``); ``no_table`` completes the error when the store
    predates a table (not yet migrated), and a missing column is a store older than this
    code; ``None``: the caller found it is not a capwatch store, for either. ``write``: a
    write command's statement, which a SQLite file this user cannot write refuses with the
    fix (:func:`write_barred`)."""
    if write and isinstance(path, Path) and isinstance(exc, sqlite3.Error):
        barred = wal_barred(path, exc, write=True)
        if barred is not None:
            return barred
    sqlstate = getattr(exc, "sqlstate", None)  # psycopg's errors carry PostgreSQL's code
    if no_table is None and (missing_table(exc) or missing_column(exc)):
        return not_capwatch(path)
    if missing_table(exc):
        return StoreError(f"{str(path)!r} {no_table}")
    if missing_column(exc):
        return not_migrated(path, exc)
    if isinstance(exc, OverflowError) or sqlstate == "22003":  # past 64-bit integers
        return StoreError(f"a value is too large for the store {str(path)!r}: {_first_line(exc)}")
    return StoreError(f"{doing} {str(path)!r}: {_first_line(exc)}")


def missing_table(exc: BaseException) -> bool:
    """Whether the store refused a statement for a table it does not have."""
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)
    ) or sqlstate == "42P01"  # undefined_table


def missing_column(exc: BaseException) -> bool:
    """Whether the store refused a statement for a column its table does not have."""
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        isinstance(exc, sqlite3.OperationalError) and "no such column" in str(exc)
    ) or sqlstate == "42703"  # undefined_column


def not_migrated(path: StoreTarget, exc: BaseException) -> StoreError:
    """A capwatch store older than this code lacks the table or column ``exc`` names."""
    return StoreError(
        f"{str(path)!r} is not migrated to this version yet ({_first_line(exc)}): the "
        "collector migrates it as it starts; wait for it, or start this version's "
        "`collector run` once"
    )


def newer_schema(path: StoreTarget, unknown: Sequence[str]) -> StoreError:
    """A store migrated by a newer capwatch: it records migrations this code does not have.
    This code would write it by an older schema's rules (a column it does not fill, an
    order or a constraint it does not know), so it refuses, as it refuses a foreign store."""
    shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
    return StoreError(
        f"{str(path)!r} was migrated by a newer capwatch ({shown}, unknown to this "
        "version): run that version or a later one here too (in a share group, upgrade "
        "every collector before restarting them)"
    )


def _first_line(exc: BaseException) -> str:
    """An error as one line (PostgreSQL adds DETAIL and HINT lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
