"""Every read command pointed at a store that is no capwatch store says so, on both backends.

A database the collector never created (an empty PostgreSQL database such as ``postgres``,
another program's SQLite file) once made ``collector alerts`` print "no alerts" and
``silence list`` "no silences", exit 0: a typo in ``--db`` read as a quiet fleet. Such a store
lacks the first migration's tables, unlike a capwatch store not yet migrated to a newer table
(which the commands still answer as empty)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli import main
from collector.paths import StoreTarget
from collector.store.connect import open_sync
from collector.store.db import Store
from collector.store.reader import StoreReader
from shared.errors import StoreError

_READS = [
    ["alerts"],
    ["alerts", "--json"],
    ["alerts", "--history"],
    ["alerts", "--dead-letters"],
    ["silence", "list"],
    ["silence", "list", "--json"],
    ["lease", "list"],
    ["quota", "show"],
    ["export"],
    ["usage", "--month", "2026-11"],
    ["query", "--rejected"],
]


def _foreign(store_url: StoreTarget) -> str:
    """``store_url`` as a store without capwatch's tables: an empty SQLite file, or the
    fixture's fresh PostgreSQL database as it comes."""
    if isinstance(store_url, Path):
        sqlite3.connect(store_url).close()
    return str(store_url)


def _refused_as_not_capwatch(argv: list[str], db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The command on ``db`` exits 2 with one line, on stderr only: not a capwatch store."""
    assert main([*argv, "--db", db]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "is not a capwatch database" in lines[0]


@pytest.mark.parametrize("argv", _READS, ids=" ".join)
def test_a_store_that_is_not_capwatch_is_named_not_read_as_empty(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    db = _foreign(store_url)
    _refused_as_not_capwatch(argv, db, capsys)


async def test_a_capwatch_store_without_alerts_yet_answers_empty(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side: a migrated store that holds nothing yet is not an error."""
    async with Store(store_url):
        pass
    capsys.readouterr()  # what creating the store logged
    assert main(["alerts", "--db", str(store_url)]) == 0
    assert main(["silence", "list", "--db", str(store_url)]) == 0
    assert capsys.readouterr().out.splitlines() == ["no alerts", "no silences"]


async def _older_than(store_url: StoreTarget, table: str) -> None:
    """``store_url`` as a capwatch store made before ``table`` (migrated, then dropped)."""
    async with Store(store_url):
        pass
    with contextlib.closing(open_sync(store_url, write=True)) as conn:
        conn.begin(write=True)
        conn.execute(f"DROP TABLE {table}")
        conn.commit()


@pytest.mark.parametrize(
    "argv", [["query"], ["query", "--gpus"], ["inventory"], ["pool", "list"]], ids=" ".join
)
async def test_a_store_older_than_a_table_is_not_migrated_not_foreign(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A capwatch store made before a table this version reads (a store of 0010, before the
    watermarks, read with the new binary before its collector restarted) once said 'is not a
    capwatch database ... `collector run` creates it': the operator's upgrade read as a
    wrong --db. It has the first migration's tables: it is a store not yet migrated."""
    await _older_than(store_url, "watermarks")
    capsys.readouterr()
    assert main([*argv, "--db", str(store_url)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "is not migrated to this version yet" in lines[0]
    assert "watermarks" in lines[0]


_SAMPLES = "CREATE TABLE samples (id INTEGER, value REAL)"
_NODES = "CREATE TABLE nodes (id INTEGER, label TEXT)"


def _foreign_with(store_url: StoreTarget, *tables: str) -> str:
    """``store_url`` as another program's database that has tables named as capwatch's of
    its own (``samples``, ``nodes``: common names, lab measurements, a metrics exporter's),
    with columns of their own (``tables``: their CREATE statements), and nothing of
    capwatch's."""
    if isinstance(store_url, Path):
        sqlite3.connect(store_url).close()
    with contextlib.closing(open_sync(store_url, write=True)) as conn:
        conn.begin(write=True)
        for create in tables:
            conn.execute(create)
        conn.commit()
    return str(store_url)


@pytest.mark.parametrize("tables", [(_SAMPLES,), (_SAMPLES, _NODES)], ids=["samples", "nodes"])
@pytest.mark.parametrize(
    "argv",
    [*_READS, ["query"], ["query", "--gpus"], ["inventory"], ["pool", "list"]],
    ids=" ".join,
)
def test_a_foreign_store_with_a_samples_table_is_not_capwatch_nor_not_migrated(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str], argv: list[str], tables: tuple[str]
) -> None:
    """A table named ``samples`` does not make a capwatch store: capwatch's migrations'
    record does (``schema_migrations`` holding the first one, which a store not yet migrated
    to a newer table has too). Told by ``samples`` alone, ``query``, ``inventory`` and ``pool
    list`` said 'is not migrated to this version yet ... start `collector run` once' (which
    would write capwatch's tables into that database), ``alerts`` 'no alerts', exit 0. So did
    a column that another program's ``nodes`` lacks, on PostgreSQL (a missing column was
    taken for a store not yet migrated whatever the store)."""
    db = _foreign_with(store_url, *tables)
    _refused_as_not_capwatch(argv, db, capsys)


def test_a_missing_column_of_a_foreign_table_is_not_capwatch(store_url: StoreTarget) -> None:
    """The reader itself, on both backends: a statement naming a column that another
    program's ``nodes`` table lacks is refused as no capwatch store, whatever the backend
    resolves first."""
    _foreign_with(store_url, _NODES)
    with StoreReader(store_url) as store, pytest.raises(StoreError) as err:
        store.fetchall("SELECT hostname FROM nodes")
    assert "is not a capwatch database" in str(err.value)


_WRITES = [
    ["pool", "create", "p"],
    ["lease", "add", "--tenant", "a", "--nodes", "n1", "--start", "2041-01-01"],
    ["quota", "set", "a", "--resource", "gpus", "--nominal", "4"],
    ["silence", "add", "--match", "node=n1", "--for", "1h", "--comment", "c", "--author", "me"],
    ["silence", "expire", "1"],
    ["alerts", "--redeliver", "1"],
]


@pytest.mark.parametrize("tables", [(), (_NODES,)], ids=["empty", "nodes"])
@pytest.mark.parametrize("argv", _WRITES, ids=" ".join)
def test_a_write_command_on_a_foreign_store_is_not_capwatch_as_a_read(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str], argv: list[str], tables: tuple[str]
) -> None:
    """The write side (:class:`collector.store.command.Command`) decides it by the same
    record as the read side: ``pool create``, ``lease add``, ``quota set`` said 'is not
    migrated yet: start this version's `collector run` once' (which would write capwatch's
    tables into that database), ``silence add`` 'has no silences table yet' and ``alerts
    --redeliver`` 'no dead letters' on another program's database or an empty one."""
    db = _foreign_with(store_url, *tables)
    _refused_as_not_capwatch(argv, db, capsys)
    with contextlib.closing(open_sync(store_url, write=False)) as conn:
        assert not conn.has_table("schema_migrations")  # and nothing was written into it


async def test_a_write_command_on_a_store_older_than_a_table_is_still_not_migrated(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side: a capwatch store without a table a write needs (the silences of a
    store made before them) keeps its own answer, not 'not a capwatch database'."""
    await _older_than(store_url, "silences")
    capsys.readouterr()
    assert main([*_WRITES[3], "--db", str(store_url)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "is not a capwatch database" not in lines[0]
    assert "silences" in lines[0]


@pytest.mark.parametrize(
    "argv",
    [["query"], ["alerts"], ["pool", "create", "p"], ["silence", "list"], ["run", "--port", "1"]],
    ids=" ".join,
)
def test_a_folder_given_as_the_store_is_named_a_folder(tmp_path: Path, argv: list[str]) -> None:
    """`--db /var/lib/capwatch` (the state folder, not the file in it) said "no capwatch
    database there: start `collector run` first", and `collector run` "set db_path to a file
    in a folder this user can write": neither says what is wrong. One line that names the
    folder and the file to give instead, exit 2. (A process of its own: `run` configures
    the logging of the process it runs in.)"""
    folder = tmp_path / "state"
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "collector", *argv, "--db", str(folder), "--no-log-json"]
        if argv[0] == "run"
        else [sys.executable, "-m", "collector", *argv, "--db", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"{str(folder)!r} is a folder, not a database file: give the file" in last, last
    assert f"--db {folder / 'capwatch.db'}" in last, last


def test_migrate_names_from_when_its_store_is_missing_or_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`collector migrate --from` pointed at nothing, or at a folder, named --db (the flag
    of the other commands), not --from."""
    to = "postgresql://capwatch@127.0.0.1:1/capwatch"
    for source in (tmp_path / "none.db", tmp_path):
        assert main(["migrate", "--from", str(source), "--to", to]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert f"--from {str(source)!r}" in err, err
        assert "--db" not in err, err
