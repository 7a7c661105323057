"""The collector's ingest on every broker capwatch is tested with: Mosquitto, NATS, amqtt.

The same whole-system checks on each (the ``broker`` fixture): a persistent session resumed
with thousands of samples queued, live ingest, and a broker restart. Counting is by stored
rows of the real SQLite file; samples carry distinct (node, timestamp), so a row count equal
to what was published means nothing was lost or stored twice.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.counters import value
from collector.localbroker import BrokerProcess, EmbeddedBroker
from collector.natsbroker import NatsBroker, find_nats_server
from collector.settings import CollectorMqttSettings
from tests.helpers import count_samples, db_rows, skip_without_nats, wait_until
from tests.integration.conftest import CollectorRunner, fast_mqtt
from tests.integration.secure_broker import make_pki

pytestmark = pytest.mark.integration


@pytest.fixture
async def runner(broker: BrokerProcess, tmp_path: Path) -> AsyncIterator[CollectorRunner]:
    """Collectors on ``broker`` (each broker in turn) and one database; stopped after."""
    runner = CollectorRunner(broker, tmp_path / "capwatch.db")
    yield runner
    await runner.stop()


_RESUME_WAIT_S = 20.0
"""Shorter than NATS' AckWait (30 s): a message NATS held back over its session's cap of
unacknowledged messages would only come after it, so this wait would see it missing."""


async def test_a_resumed_session_delivers_its_whole_backlog_at_once(
    broker: BrokerProcess, runner: CollectorRunner
) -> None:
    """2,000 samples queued while the collector was away are all stored right after it resumes."""
    sim = FleetSimulator(50, gpus_per_node=8, seed=22, interval_s=1)
    await runner.start()  # creates the persistent session
    await runner.stop()
    stats = await publish_fleet(
        fast_mqtt(broker), sim, ticks=40, burst=True, start_ts=time.time() - 120
    )
    assert stats.published == 2000
    collector = await runner.start()
    await wait_until(
        lambda: count_samples(runner.db) == 2000,
        timeout_s=_RESUME_WAIT_S,
        what=f"2,000 samples after resume (have {count_samples(runner.db)})",
    )
    assert db_rows(runner.db, "SELECT count(DISTINCT node) FROM samples") == [(50,)]
    assert db_rows(runner.db, "SELECT min(seq), max(seq) FROM samples") == [(0, 39)]
    assert value(collector.ingest_metrics.rejected) == 0


async def test_live_samples_are_all_stored(broker: BrokerProcess, runner: CollectorRunner) -> None:
    """1,000 samples published while the collector runs are stored; every node is known."""
    sim = FleetSimulator(25, gpus_per_node=4, seed=23, interval_s=1)
    await runner.start()
    stats = await publish_fleet(
        fast_mqtt(broker), sim, ticks=40, burst=True, start_ts=time.time() - 60
    )
    assert stats.published == 1000
    await wait_until(lambda: count_samples(runner.db) == 1000, what="1,000 samples")
    inventories = "SELECT count(*) FROM nodes WHERE inventory IS NOT NULL AND status IS NOT NULL"
    await wait_until(lambda: db_rows(runner.db, inventories) == [(25,)], what="25 nodes known")


async def test_a_broker_restart_loses_no_sample(
    broker: BrokerProcess, runner: CollectorRunner
) -> None:
    """The collector reconnects after the broker restarts; what was queued then is stored."""
    if isinstance(broker, EmbeddedBroker):
        pytest.skip("the embedded broker keeps sessions in memory: a restart loses them")
    sim = FleetSimulator(20, gpus_per_node=4, seed=24, interval_s=1)
    collector = await runner.start()
    start = time.time() - 120
    await publish_fleet(fast_mqtt(broker), sim, ticks=10, burst=True, start_ts=start)
    await wait_until(lambda: count_samples(runner.db) == 200, what="first 200")
    await runner.stop()
    await publish_fleet(fast_mqtt(broker), sim, ticks=10, burst=True, start_ts=start + 10)
    broker.restart()
    collector = await runner.start()
    await publish_fleet(fast_mqtt(broker), sim, ticks=10, burst=True, start_ts=start + 20)
    await wait_until(lambda: count_samples(runner.db) == 600, what="all 600 samples")
    assert value(collector.reader_metrics.sessions_lost) == 0


async def test_the_collector_ingests_from_nats_over_tls(tmp_path: Path) -> None:
    """NATS' MQTT listener with TLS: the collector verifies it against the CA and stores."""
    if find_nats_server() is None:
        skip_without_nats()
    pki = make_pki(tmp_path / "pki", client_cn="unused")
    sim = FleetSimulator(10, gpus_per_node=2, seed=25, interval_s=1)
    with NatsBroker(tmp_path / "nats", tls=(pki.server_cert, pki.server_key)) as nats:
        mqtt = fast_mqtt(nats).model_copy(update={"tls_ca_file": pki.ca_cert})
        runner = CollectorRunner(nats, tmp_path / "capwatch.db")
        runner.settings = runner.settings.model_copy(
            update={"mqtt": CollectorMqttSettings(**dict(mqtt))}
        )
        try:
            await runner.start()
            await publish_fleet(mqtt, sim, ticks=10, burst=True, start_ts=time.time() - 60)
            await wait_until(lambda: count_samples(runner.db) == 100, what="100 samples")
        finally:
            await runner.stop()
