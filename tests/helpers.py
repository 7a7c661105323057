"""Small helpers for tests: polling with a deadline, reading the SQLite file, running the
collector's command line in this process, and the one way to give up on a test for want of
Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final, NoReturn

import pytest

from collector.paths import PgTarget, StoreTarget

REPO: Final = Path(__file__).resolve().parents[1]

NO_MOSQUITTO: Final = "mosquitto is not installed"
"""In every skip for a missing broker tool: tests/conftest.py counts the skips carrying it
and ends the run with one loud line."""


def skip_without_mosquitto(missing: str = "mosquitto") -> NoReturn:
    """Skip the test for want of ``missing`` (a Mosquitto tool); under ``CI=true``, fail:
    a CI run must not pass with its broker tests left out."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{NO_MOSQUITTO} ({missing} is missing); .ci/run must install it")
    pytest.skip(f"{NO_MOSQUITTO} ({missing} is missing; apt-get install mosquitto)")


@contextlib.asynccontextmanager
async def write_locked(db: Path) -> AsyncIterator[None]:
    """Hold SQLite's write lock from another connection: the collector's commits wait.

    Taken in a thread: the collector under test may be inside a write transaction that needs
    this event loop to reach its commit, and ``BEGIN IMMEDIATE`` waits for it (SQLite's busy
    handler, up to 5 s), so taking the lock on the loop itself can deadlock until "database
    is locked"."""

    def begin() -> sqlite3.Connection:
        conn = sqlite3.connect(db, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        return conn

    conn = await asyncio.to_thread(begin)
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def wait_until(pred: Callable[[], bool], *, timeout_s: float = 20.0, what: str = "") -> None:
    """Poll ``pred`` every 50 ms; fail with ``what`` if it is not true within the timeout."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or pred}")
        await asyncio.sleep(0.05)


def db_rows(db: StoreTarget, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run a read query (``?`` placeholders) on a (possibly live) store with a fresh
    connection: a SQLite file (WAL), or a PostgreSQL database; rows as plain tuples, none
    when the store or its tables are not created yet."""
    if isinstance(db, PgTarget):
        return _pg_rows(db, sql, params)
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


def _pg_rows(db: PgTarget, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    import psycopg  # noqa: PLC0415

    from collector.store.dialect import pg_sql  # noqa: PLC0415

    with psycopg.connect(db.url, autocommit=True) as conn:
        try:
            return [tuple(r) for r in conn.execute(pg_sql(sql), params).fetchall()]
        except psycopg.errors.UndefinedTable:
            return []


def db_execute(db: StoreTarget, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Run one statement (``?`` placeholders) on a store and commit: a test's hand edit."""
    if isinstance(db, PgTarget):
        import psycopg  # noqa: PLC0415

        from collector.store.dialect import pg_sql  # noqa: PLC0415

        with psycopg.connect(db.url, autocommit=True) as pg:
            pg.execute(pg_sql(sql), params)
        return
    conn = sqlite3.connect(db, timeout=5)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def collector_cli(*args: str) -> tuple[int, str, str]:
    """``collector ARGS`` in this process: its exit status, stdout and stderr."""
    from collector.cli import main  # noqa: PLC0415 (the CLI's imports: only for its tests)

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def collector_json(*args: str) -> Any:
    """``collector ARGS --json`` in this process, which must exit 0: its document."""
    code, out, err = collector_cli(*args, "--json")
    assert code == 0, err or out
    return json.loads(out)


def count_samples(db: StoreTarget, node: str | None = None) -> int:
    """Stored sample rows, for one node or all."""
    if node is None:
        rows = db_rows(db, "SELECT count(*) FROM samples")
    else:
        rows = db_rows(db, "SELECT count(*) FROM samples WHERE node = ?", (node,))
    return int(rows[0][0]) if rows else 0


NO_PROMETHEUS: Final = "prometheus is not installed"
"""In every skip for a missing Prometheus tool (promtool, prometheus): counted like
:data:`NO_MOSQUITTO` by tests/conftest.py."""


def prometheus_tool(name: str) -> str:
    """The path of ``name`` (``promtool``, ``prometheus``) from Debian's ``prometheus``
    package; skip the test without it, and fail under ``CI=true`` (``.ci/run`` installs it)."""
    import shutil  # noqa: PLC0415

    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is not None:
        return found
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{NO_PROMETHEUS} ({name} is missing); .ci/run must install it")
    pytest.skip(f"{NO_PROMETHEUS} ({name} is missing; apt-get install prometheus)")


NO_NATS: Final = "nats-server is not installed"
"""In every skip for a missing ``nats-server``: counted like :data:`NO_MOSQUITTO`."""


def skip_without_nats() -> NoReturn:
    """Skip the test for want of ``nats-server``; under ``CI=true``, fail (``.ci/run``
    installs it: the subscriber's conformance on a second broker must not be left out)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{NO_NATS}; .ci/run must install it")
    pytest.skip(f"{NO_NATS} (apt-get install nats-server)")


NO_POSTGRES: Final = "PostgreSQL is not installed"
"""In every skip for a missing PostgreSQL server: counted like :data:`NO_MOSQUITTO`."""


def skip_without_postgres() -> NoReturn:
    """Skip the test for want of PostgreSQL; under ``CI=true``, fail (``.ci/run`` installs
    it: the store's second backend must not be left untested)."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{NO_POSTGRES}; .ci/run must install it")
    pytest.skip(f"{NO_POSTGRES} (apt-get install postgresql)")


def promtool_check_metrics(text: str) -> tuple[int, list[str]]:
    """``promtool check metrics`` on ``text``: its exit status (0 clean, 3 lint problems,
    1 unparsable) and the problems it printed, one per line."""
    import subprocess  # noqa: PLC0415

    proc = subprocess.run(
        [prometheus_tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in lines if line.strip()]


def assert_daily_is_the_hours_summed(db: StoreTarget) -> None:
    """``usage_daily`` holds exactly the ledger's hours summed per UTC day, lease and pool
    (tenant, hours, allocated, used and held GPU-hours, energy), none left behind."""
    daily = db_rows(
        db,
        "SELECT day, lease, pool, tenant, n, allocated_gpu_h, used_gpu_h, node_kwh, held_h "
        "FROM usage_daily ORDER BY day, lease, pool",
    )
    hourly = db_rows(
        db,
        "SELECT hour / 86400, lease, pool, max(tenant), count(*), sum(allocated_gpu_h), "
        # A day of rows with no energy (nodes that sent nothing) sums to 0, as the daily's.
        "sum(used_gpu_h), coalesce(sum(node_kwh), 0), sum(held_h) FROM usage_ledger "
        "GROUP BY 1, lease, pool "
        "ORDER BY 1, lease, pool",
    )
    assert len(daily) == len(hourly) > 0
    for d, h in zip(daily, hourly, strict=True):
        assert d == pytest.approx(h)


SET_WAYS: Final = ("flag", "env", "config")
"""The three ways a setting is given: :func:`set_one_way`."""


def set_one_way(
    how: str, monkeypatch: pytest.MonkeyPatch, config: Path, *, key: str, flag: str, value: str
) -> list[str]:
    """Give setting ``key`` the text ``value`` one way (``how``, one of :data:`SET_WAYS`):
    in the TOML file ``config`` (written empty otherwise), as ``CAPWATCH_<KEY>``, or as
    ``flag``. Returns the arguments to add to the command line."""
    config.write_text(f"{key} = {value!r}\n" if how == "config" else "")
    if how == "env":
        monkeypatch.setenv(f"CAPWATCH_{key.upper()}", value)
    return ["--config", str(config), *([flag, value] if how == "flag" else [])]


def python_child(code: str) -> str:
    """The standard output of ``python -c code`` in a fresh process (its modules its own:
    what an import pulls in shows there), run in the repository with no ``CAPWATCH_*``
    variable of this one; it must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CAPWATCH_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout
