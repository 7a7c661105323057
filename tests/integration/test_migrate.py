"""``collector migrate``: a store built by the real collector (Mosquitto, a publisher, the
commands) copied into PostgreSQL holds the same rows, table by table, and answers alike."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from agent.simulate import FleetSimulator, publish_fleet
from collector.alerts.fingerprint import fingerprint
from collector.localbroker import MosquittoBroker
from collector.localpg import LocalPostgres
from collector.paths import parse_target
from collector.settings import ElectionSettings
from collector.store.alerts import AlertChange, OutboxNew, write_alerts
from collector.store.copy import _IDENTITY, STARTUP_TABLES, TABLES
from collector.store.db import Store
from collector.store.ledger import LedgerRow, write_ledger
from collector.store.watermarks import WatermarkRow, write_watermarks
from tests.collector.governance.fleet import cli as _cli
from tests.helpers import count_samples, db_rows, wait_until
from tests.integration.conftest import CollectorRunner, fast_mqtt

pytestmark = pytest.mark.integration


async def cli(*args: str) -> tuple[int, str, str]:
    """A command in a thread, beside the collector on this loop."""
    return await asyncio.to_thread(_cli, *args)


def _table(db: Any, table: str) -> list[tuple[Any, ...]]:
    return sorted(db_rows(db, f"SELECT * FROM {table}"), key=repr)


async def _build(runner: CollectorRunner, mosquitto: MosquittoBroker) -> Path:
    """The collector stores a fleet; the commands add a silence, a pool, a lease, a quota;
    an alert fires with a notification in the outbox; an hour of usage ledger and a watermark."""
    db = runner.db
    await runner.start()
    sim = FleetSimulator(6, gpus_per_node=8, seed=9, interval_s=1)
    stats = await publish_fleet(
        fast_mqtt(mosquitto), sim, ticks=5, burst=True, start_ts=time.time() - 30
    )
    await wait_until(lambda: count_samples(db) == stats.published, what="the fleet's samples")
    await wait_until(
        lambda: db_rows(db, "SELECT count(inventory) FROM nodes") == [(6,)], what="inventories"
    )
    nodes = " ".join(sim.node_ids[:2])
    for argv in (
        ("silence", "add", "--match", "alertname=GpuTemperature", "--for", "2h", "--comment", "x"),
        ("pool", "create", "p1", "--nodes", *nodes.split()),
        ("lease", "add", "--tenant", "acme", "--pool", "p1", "--start", "2041-01-01"),
        ("quota", "set", "acme", "--nominal", "16"),
    ):
        code, _, err = await cli(*argv, "--db", str(db))
        assert (code, err) == (0, ""), err
    await runner.stop()
    now = time.time()
    labels = {"alertname": "GpuTemperature", "node": sim.node_ids[0], "gpu": "3"}
    change = AlertChange(
        fingerprint(labels), "GpuTemperature", json.dumps(labels), "{}", "inactive",
        "firing", now, now, now, None,
    )  # fmt: skip
    note = OutboxNew("u-1", "hook", change.fingerprint, change.rule, "firing", "{}", now, now + 60)
    hour = int(now) - int(now) % 3600
    ledger = LedgerRow(
        hour, sim.node_ids[0], "l1", "acme", "p1", 8, 1.0, 8.0, 2.0, 3.0, 8.0, 1.5, 0.2, 2.0,
        "measured",
    )  # fmt: skip
    async with Store(db) as store:
        await write_alerts(store, [change], 86_400.0, [note], now=now)
        await write_ledger(store, [hour], [ledger], [], now)
        await write_watermarks(store, [WatermarkRow(sim.node_ids[0], 7, 4, 4, int(now * 1000))])
    return db


async def test_a_collectors_store_round_trips_into_postgresql(
    mosquitto: MosquittoBroker,
    collector_runner: CollectorRunner,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every table's rows arrive as they were; the counts printed are those; the commands
    answer the same on both; a second run is refused, --force copies again."""
    source = await _build(collector_runner, mosquitto)
    target = parse_target(postgres_url)
    code, out, err = await cli("migrate", "--from", str(source), "--to", postgres_url, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert list(report["tables"]) == list(TABLES)
    schema = {
        r[0]
        for r in db_rows(source, "SELECT name FROM sqlite_master WHERE type = 'table'")
        if r[0] != "schema_migrations"
    }
    assert set(TABLES) == schema  # a table added by a migration is copied too
    for table in ("rollups", "watermarks", "usage_ledger", "usage_daily"):
        assert report["tables"][table] > 0, table
    for table in TABLES:
        rows = _table(source, table)
        assert _table(target, table) == rows, table
        assert report["tables"][table] == len(rows), table
    assert report["tables"]["samples"] == 30
    assert report["tables"]["outbox"] == report["tables"]["silences"] == 1
    for argv in (
        ("alerts", "--json"),
        ("silence", "list", "--json"),
        ("pool", "list", "--json"),
        ("lease", "list", "--json"),
        ("export",),
        ("query", "--node", "x1000c0s0b0n0", "--json"),
        ("query", "--gpus", "--json"),  # the payloads, read by the codecs they name
    ):
        on_sqlite = await cli(*argv, "--db", str(source))
        assert on_sqlite[0] == 0
        assert await cli(*argv, "--db", postgres_url) == on_sqlite, argv
    code, _, err = await cli("migrate", "--from", str(source), "--to", postgres_url)
    assert code == 2
    assert "is not empty" in err
    assert "--force" in err
    code, out, _ = await cli("migrate", "--from", str(source), "--to", postgres_url, "--force")
    assert code == 0
    assert "samples" in out
    assert _table(target, "leases") == _table(source, "leases")
    async with Store(target) as store:  # new ids continue after the copied ones
        new = await store.fetchall(
            "INSERT INTO silences (matchers, starts_at, ends_at, comment, author, created) "
            "VALUES ('[]', 0, 0, '', '', 0) RETURNING id"
        )
        assert new[0][0] == 2


async def test_a_database_the_collector_already_started_on_is_migrated_into(
    mosquitto: MosquittoBroker,
    collector_runner: CollectorRunner,
    postgres_url: str,
) -> None:
    """An operator who pointed `collector run` at the new database first (to try it, or a
    unit that started before the copy) has a capwatch store there: migrated, holding only
    what a collector writes as it starts and stops (its counters, the broker session in
    meta...), no sample, no alert, no governance. `collector migrate` refused it as "not
    empty" unless --force; it copies into it, and what the source holds wins. Not while
    that collector still runs there: it would write on beside the copy."""
    source = await _build(collector_runner, mosquitto)
    target = parse_target(postgres_url)
    on_pg = CollectorRunner(mosquitto, target)
    await on_pg.start()
    await wait_until(
        lambda: db_rows(target, "SELECT count(*) FROM capwatch_leader") == [(1,)],
        what="the collector on PostgreSQL leading",
    )
    code, _, err = await cli("migrate", "--from", str(source), "--to", postgres_url)
    await on_pg.stop()
    assert code == 2
    assert "has a running collector ('capwatch-collector' leads on it): stop it" in err, err
    started = {t for t in TABLES if db_rows(target, f"SELECT 1 FROM {t} LIMIT 1")}
    assert started, "the collector wrote nothing at start: this test tests nothing"
    assert started <= set(STARTUP_TABLES)  # what a start writes is named there
    code, out, err = await cli("migrate", "--from", str(source), "--to", postgres_url, "--json")
    assert (code, err) == (0, ""), err
    assert json.loads(out)["tables"]["samples"] == 30
    for table in TABLES:
        assert _table(target, table) == _table(source, table), table


async def test_a_collector_electing_in_another_database_is_not_migrated_under(
    mosquitto: MosquittoBroker,
    collector_runner: CollectorRunner,
    postgres_server: LocalPostgres,
) -> None:
    """A collector on the target whose election lives in a database of its own
    (``[election] url``) leaves no lease in the target: `collector migrate` still sees it
    (its connection to the target) and refuses to empty the database under it; once it is
    stopped, the copy goes in."""
    source = await _build(collector_runner, mosquitto)
    url = postgres_server.create_database("migrate_target")
    target = parse_target(url)
    election = postgres_server.create_database("migrate_election")
    on_pg = CollectorRunner(mosquitto, target)
    on_pg.settings = on_pg.settings.model_copy(
        update={"election": ElectionSettings(url=SecretStr(election))}
    )
    await on_pg.start()
    try:
        await wait_until(
            lambda: (
                db_rows(parse_target(election), "SELECT count(*) FROM capwatch_leader") == [(1,)]
            ),
            what="the collector leading through its own election database",
        )
        assert db_rows(target, "SELECT count(*) FROM capwatch_leader") == [(0,)]
        code, _, err = await cli("migrate", "--from", str(source), "--to", url)
        assert code == 2, err
        assert "a collector or a command is connected to it" in err, err
        assert db_rows(target, "SELECT count(*) FROM meta") != [(0,)]  # not emptied
    finally:
        await on_pg.stop()
    code, out, err = await cli("migrate", "--from", str(source), "--to", url, "--json")
    assert (code, err) == (0, ""), err
    assert json.loads(out)["tables"]["samples"] == 30


async def test_every_table_the_store_numbers_continues_after_the_copied_ids(
    tmp_path: Path, postgres_url: str
) -> None:
    """Each PostgreSQL identity column continues after the rows copied with their ids: a
    store with a forgotten node, copied, forgets another (review9: ``forgotten_nodes`` was
    copied but not in ``_IDENTITY``, and the next ``inventory forget`` on PostgreSQL hit
    ``forgotten_nodes_pkey``)."""
    source = tmp_path / "c.db"
    async with Store(source) as store, store.transaction("the test's rows"):
        await store.execute("INSERT INTO nodes (node) VALUES ('n1'), ('n2')")
        await store.execute("INSERT INTO forgotten_nodes (node, at, forced) VALUES ('n0', 1, 0)")
    code, _, err = await cli("migrate", "--from", str(source), "--to", postgres_url)
    assert (code, err) == (0, ""), err
    target = parse_target(postgres_url)
    numbered = {
        r[0]
        for r in db_rows(
            target,
            "SELECT table_name FROM information_schema.columns "
            "WHERE is_identity = 'YES' AND table_schema = current_schema()",
        )
    }
    # ledger_dirty's key (an hour) is always given, never numbered by the store.
    assert numbered - {"ledger_dirty"} == set(_IDENTITY)
    code, _, err = await cli("inventory", "forget", "n1", "--db", postgres_url, "--json")
    assert code in (0, 1), err  # 1: no broker to clear the retained messages on
    assert db_rows(target, "SELECT id, node FROM forgotten_nodes ORDER BY id") == [
        (1, "n0"),
        (2, "n1"),
    ]


def _other_programs(path: Path) -> None:
    """Another program's SQLite file with a migrations table of its own (no capwatch row)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE schema_migrations (name TEXT)")
        conn.execute("INSERT INTO schema_migrations VALUES ('2024_init')")
        conn.commit()


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda p: p.write_bytes(b"not a database at all, " * 100), "text.db"),
        (_other_programs, "other.db"),
    ],
)
async def test_a_source_that_is_no_capwatch_store_is_refused_by_name(
    tmp_path: Path, make: Any, name: str
) -> None:
    """`collector migrate --from` another program's file says so (exit 2), as every other
    command does: not 'not migrated to this version: start `collector run` on it', whose fix
    would write capwatch's tables into that database. Refused before any connection to the
    target (none is running here)."""
    source = tmp_path / name
    make(source)
    code, _, err = await cli("migrate", "--from", str(source), "--to", "postgresql://127.0.0.1:9/x")
    assert code == 2, err
    assert f"{str(source)!r} is not a capwatch database" in err


async def test_a_source_a_newer_capwatch_migrated_is_refused_by_name(tmp_path: Path) -> None:
    """`collector migrate --from` a store a newer capwatch migrated is refused (exit 2),
    naming the migration, as the collector's start and the write commands refuse it: this
    version copies only the tables and columns it knows, into a target it records as migrated
    by its own rules (a newer table silently left behind, a newer column refused mid-copy).
    Refused before any connection to the target (none is running here)."""
    source = tmp_path / "newer.db"
    async with Store(source):
        pass
    with contextlib.closing(sqlite3.connect(source)) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES ('9999_future', 1)")
        conn.commit()
    code, _, err = await cli("migrate", "--from", str(source), "--to", "postgresql://127.0.0.1:9/x")
    assert code == 2, err
    assert f"{str(source)!r} was migrated by a newer capwatch (9999_future," in err, err
