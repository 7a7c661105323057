"""A collector killed with SIGKILL mid-stream loses nothing: acks follow commits; with the
broker killed too (no persistence), the agents' spools and the store's watermark make up
for what the broker lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.localbroker import MosquittoBroker
from collector.store.db import MIGRATIONS
from tests.helpers import count_samples, db_rows, wait_until
from tests.integration.conftest import (
    AgentProcess,
    fast_mqtt,
    start_agents,
    stop_and_count,
    wait_acknowledged,
    wait_watermarks,
)

pytestmark = pytest.mark.integration


def _collector(broker: MosquittoBroker, db: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "collector",
        "run",
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        "--db",
        str(db),
        "--log-level",
        "warning",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


async def test_sigkill_mid_drain_then_restart_stores_every_sample_once(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Kill -9 while a backlog drains; the next collector gets the unacknowledged rest."""
    db, log = tmp_path / "capwatch.db", tmp_path / "collector.log"
    proc = _collector(mosquitto, db, log)  # registers the persistent session
    try:
        await wait_until(
            lambda: db_rows(db, "SELECT count(*) FROM schema_migrations") == [(len(MIGRATIONS),)],
            what="collector started",
        )
        await wait_until(
            lambda: bool(db_rows(db, "SELECT value FROM meta WHERE key LIKE 'mqtt_session %'")),
            what="collector subscribed (its session is remembered)",
        )
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    sim = FleetSimulator(1000, gpus_per_node=8, seed=21, interval_s=1)
    stats = await publish_fleet(
        fast_mqtt(mosquitto), sim, ticks=20, burst=True, start_ts=time.time() - 60
    )
    assert stats.published == 20_000

    proc = _collector(mosquitto, db, log)
    try:
        await wait_until(lambda: count_samples(db) >= 1000, timeout_s=60, what="drain under way")
    finally:
        proc.kill()  # no chance to flush or acknowledge anything
        proc.wait(timeout=20)
    at_kill = count_samples(db)
    assert at_kill < 20_000, "killed too late to test anything"

    proc = _collector(mosquitto, db, log)
    try:
        await wait_until(
            lambda: count_samples(db) == 20_000,
            timeout_s=90,
            what=f"all 20,000 samples (had {at_kill} at the kill)",
        )
    finally:
        proc.send_signal(signal.SIGTERM)  # a clean stop commits what it holds first
        assert proc.wait(timeout=20) == 0
    assert count_samples(db) == 20_000  # redelivered duplicates were not stored twice
    counters = dict(db_rows(db, "SELECT name, value FROM counters"))
    assert counters.get("rejected", 0) == 0
    assert db_rows(db, "SELECT count(DISTINCT node) FROM samples") == [(1000,)]


def count_node(db: Path, node: str) -> int:
    """Sample rows of ``node``."""
    return int(db_rows(db, "SELECT count(*) FROM samples WHERE node = ?", (node,))[0][0])


@pytest.mark.parametrize("mosquitto", [{"persistence": False}], indirect=True)
async def test_collector_and_broker_sigkilled_mid_stream_lose_no_agent_sample(
    mosquitto: MosquittoBroker, agents: list[AgentProcess], tmp_path: Path
) -> None:
    """Three agents publish through their spools to a collector process; the collector is
    SIGKILLed, samples queue in the broker, then the broker is SIGKILLed too and restarts
    empty (no persistence). The next collector finds no session; its watermarks report the
    hole and the agents send their held samples again: every seq each took, stored once."""
    db, log = tmp_path / "capwatch.db", tmp_path / "collector.log"
    proc = _collector(mosquitto, db, log)
    try:
        # Subscribed before the agents start: samples of an epoch are counted from seq 0, and
        # ones the broker dropped for want of a subscriber would be a hole given up later.
        await wait_until(
            lambda: bool(db_rows(db, "SELECT value FROM meta WHERE key LIKE 'mqtt_session %'")),
            what="collector subscribed",
        )
        fleet = start_agents(mosquitto, tmp_path, agents, 3)
        await wait_watermarks(fleet, 2)
    finally:
        proc.kill()
        proc.wait(timeout=20)
    await wait_acknowledged(fleet, 3)  # by the broker, stored nowhere
    await asyncio.to_thread(mosquitto.kill)
    await asyncio.to_thread(mosquitto.start)
    proc = _collector(mosquitto, db, log)
    try:
        before = {a.node: count_node(db, a.node) for a in fleet}
        await wait_until(
            lambda: all(count_node(db, a.node) > before[a.node] + 4 for a in fleet),
            timeout_s=30,
            what="samples after the collector's return",
        )
        counts = await stop_and_count(db, fleet)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    for node, (taken, rows, distinct) in counts.items():
        assert (rows, distinct) == (taken, taken), node  # 0 lost, none stored twice
    assert "mqtt_session_lost" in log.read_text()
