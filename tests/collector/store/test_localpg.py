"""The throw-away PostgreSQL the demo and the tests use: it starts, answers, survives a
restart and a crash (SIGKILL of the postmaster) with committed data intact."""

from __future__ import annotations

import psycopg

from collector.localpg import LocalPostgres


def test_database_per_test_is_empty_and_usable(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        row = conn.execute("SELECT sum(x) FROM t").fetchone()
    assert row == (3,)


def test_committed_rows_survive_restart_and_crash(own_postgres: LocalPostgres) -> None:
    postgres_server = own_postgres
    url = postgres_server.create_database("crash_survivor")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (7)")
    postgres_server.restart()
    postgres_server.kill()
    postgres_server.start()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]
