"""A SQLite store in a folder its reader cannot write: SQLite's WAL mode needs the ``-shm``
and ``-wal`` files beside the database even to read. The reader gets one line with the fix,
not SQLite's bare "attempt to write a readonly database"; while the collector holds the
store open (its files exist) the same reader reads it. A write command there (its folder,
or the files the collector created as its own user, not writable) gets one line with its
own fix, not the reader's (a copy) nor SQLite's bare words.

Run as root, permissions do not bar anything: the reader is then a forked child that drops
to ``nobody`` (the test process's modules are already loaded: nobody may not read them)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.store.command import Command
from collector.store.connect import open_sync
from collector.store.db import Store
from shared.errors import StoreError

_NOBODY = 65534


def _read_as_reader(path: Path) -> str:
    """What a command's read of ``path`` gets, as a user who cannot write its folder:
    ``"ok"`` or the error's line."""

    def attempt() -> str:
        try:
            conn = open_sync(path, write=False)
            conn.execute("SELECT count(*) FROM samples").fetchall()
            conn.close()
        except (StoreError, sqlite3.Error) as exc:
            return str(exc)
        return "ok"

    return _as_nobody(attempt)


def _write_as_writer(path: Path) -> str:
    """What a write command's transaction on ``path`` gets (``pool create``, ``silence
    add``... write through :class:`Command`), as a user who cannot write its folder."""

    def attempt() -> str:
        try:
            with Command(path) as cmd:
                cmd.execute("INSERT INTO meta (key, value, updated) VALUES ('probe', 'x', 0)")
        except (StoreError, sqlite3.Error) as exc:
            return str(exc)
        return "ok"

    return _as_nobody(attempt)


def _as_nobody(attempt: Callable[[], str]) -> str:
    if os.geteuid() != 0:
        return attempt()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(rfd)
            os.setgid(_NOBODY)
            os.setuid(_NOBODY)
            os.write(wfd, attempt().encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        answer = r.read().decode()
    os.waitpid(pid, 0)
    return answer


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder others can enter but not write (under /tmp: pytest's own is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="capwatch-ro-"))
    path.chmod(0o755)
    yield path
    path.chmod(0o755)
    shutil.rmtree(path)


async def test_a_read_only_folder_is_one_line_with_the_fix(folder: Path) -> None:
    db = folder / "capwatch.db"
    async with Store(db):
        pass  # created and migrated; closed cleanly, so no -shm / -wal remain
    os.chmod(folder, 0o555)
    answer = _read_as_reader(db)
    assert answer.startswith(f"cannot read database {str(db)!r}: attempt to write a readonly")
    assert "needs capwatch.db-shm and -wal beside it even to read" in answer
    assert "make that folder writable by this user" in answer
    assert "\n" not in answer
    assert os.listdir(folder) == ["capwatch.db"]


async def test_while_the_collector_holds_it_open_the_reader_reads(folder: Path) -> None:
    db = folder / "capwatch.db"
    async with Store(db):
        os.chmod(folder, 0o555)  # the writer's -shm and -wal exist: SQLite reads through them
        assert _read_as_reader(db) == "ok"


_WRITE_FIX = (
    "run the command as the collector's user, or make them writable by this user (the "
    "collector's group, say)"
)


async def test_a_write_command_in_a_read_only_folder_is_one_line_with_its_fix(
    folder: Path,
) -> None:
    """Closed (no -shm yet): it got the reader's line, whose fix (write to a copy) loses the
    change; held open by the collector: SQLite's bare "attempt to write a readonly
    database"."""
    db = folder / "capwatch.db"
    async with Store(db):
        pass
    os.chmod(folder, 0o555)
    answer = _write_as_writer(db)
    assert answer.startswith(f"cannot write database {str(db)!r}: attempt to write a readonly")
    assert f"this user cannot write its folder {str(folder)!r}, capwatch.db)" in answer
    assert answer.endswith(_WRITE_FIX)
    assert "\n" not in answer
    os.chmod(folder, 0o755)
    async with Store(db):
        os.chmod(folder, 0o555)
        answer = _write_as_writer(db)
    assert answer.startswith(f"cannot write database {str(db)!r}: attempt to write a readonly")
    assert "capwatch.db, capwatch.db-shm, capwatch.db-wal)" in answer
    assert answer.endswith(_WRITE_FIX)
