"""The collector on a real PostgreSQL and a real Mosquitto: a server crash or restart in the
middle of ingest loses nothing and stores nothing twice."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.counters import value
from collector.localbroker import MosquittoBroker
from collector.localpg import LocalPostgres
from collector.paths import PgTarget, parse_target
from tests.helpers import count_samples, db_rows, wait_until
from tests.integration.conftest import CollectorRunner, fast_mqtt

pytestmark = pytest.mark.integration


@pytest.fixture(params=["kill", "restart"])
async def faulted(
    request: pytest.FixtureRequest, mosquitto: MosquittoBroker
) -> AsyncIterator[tuple[str, LocalPostgres, CollectorRunner]]:
    """A fault, the PostgreSQL it strikes and a :class:`CollectorRunner` on a database there:
    a SIGKILL strikes a server of the test's own (``own_postgres``: the crash recovery of the
    session's server would hold up every later test), a restart the session's."""
    fault: str = request.param
    server: LocalPostgres = request.getfixturevalue(
        "own_postgres" if fault == "kill" else "postgres_server"
    )
    url = (
        server.create_database("crash_mid_ingest")
        if fault == "kill"
        else request.getfixturevalue("postgres_url")
    )
    target = parse_target(url)
    assert isinstance(target, PgTarget)
    runner = CollectorRunner(mosquitto, target)
    yield fault, server, runner
    await runner.stop()


async def test_a_postgresql_crash_or_restart_mid_ingest_loses_and_doubles_nothing(
    mosquitto: MosquittoBroker, faulted: tuple[str, LocalPostgres, CollectorRunner]
) -> None:
    """SIGKILL of the postmaster (or a fast restart) while samples arrive: the writer
    reconnects and writes the batch again; every sample published is stored exactly once, so
    none was acknowledged before its commit."""
    fault, postgres_server, pg_runner = faulted
    collector = await pg_runner.start()
    db = pg_runner.target
    sim = FleetSimulator(25, gpus_per_node=8, seed=5, interval_s=1)
    now = time.time()
    first = await publish_fleet(fast_mqtt(mosquitto), sim, ticks=8, burst=True, start_ts=now - 60)
    await wait_until(lambda: count_samples(db) == first.published, what="the first samples")
    if fault == "kill":
        postgres_server.kill()
    else:
        postgres_server.stop()
    second = await publish_fleet(fast_mqtt(mosquitto), sim, ticks=8, burst=True, start_ts=now - 50)
    await wait_until(
        lambda: value(collector.writer_metrics.store_unavailable) >= 1,
        what="the writer finding the store away",
    )
    postgres_server.start()
    total = first.published + second.published
    await wait_until(lambda: count_samples(db) == total, timeout_s=60, what=f"{total} samples")
    assert db_rows(db, "SELECT count(DISTINCT (node, seq)) FROM samples") == [(total,)]
    third = await publish_fleet(fast_mqtt(mosquitto), sim, ticks=2, burst=True, start_ts=now - 40)
    await wait_until(
        lambda: count_samples(db) == total + third.published, what="ingest after the fault"
    )
    await pg_runner.stop()
    assert count_samples(db) == total + third.published == 25 * 18
