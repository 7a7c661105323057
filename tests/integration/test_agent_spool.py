"""The agent's spool and sequence end to end, with real Mosquitto, agents and a collector:
an agent SIGKILLed during a broker outage loses nothing; a gap is listed and alerted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest

from agent.simulate import STOP_GRACE_S, FleetSimulator, publish_fleet
from collector.counters import value
from collector.localbroker import MosquittoBroker
from shared.schema import encode
from shared.topics import sample_topic
from tests.helpers import collector_json, count_samples, db_rows, wait_until
from tests.integration.conftest import (
    SPOOL_NODE,
    AgentProcess,
    CollectorRunner,
    fast_mqtt,
    start_agents,
    stop_and_count,
    stored_seqs,
    wait_acknowledged,
    wait_watermarks,
)

pytestmark = pytest.mark.integration

NODE = SPOOL_NODE


async def test_an_agent_killed_during_a_broker_outage_loses_nothing_and_keeps_order(
    mosquitto: MosquittoBroker,
    collector_runner: CollectorRunner,
    agents: list[AgentProcess],
    tmp_path: Path,
) -> None:
    """Broker down; agent A spools (a fresh spool: the wall clock in ms is its epoch), is
    SIGKILLed; agent B starts on the same spool (the next epoch), spools more; the broker
    returns: every sample of both epochs is stored, in order, none missing."""
    await collector_runner.start()
    db = collector_runner.db
    spool, log = tmp_path / "spool", tmp_path / "agent.log"
    await asyncio.to_thread(mosquitto.stop)

    first = AgentProcess(mosquitto, spool, log)
    agents.append(first)

    def spooled(a: AgentProcess, n: int) -> bool:
        value = a.metric("capwatch_agent_buffered_samples")
        return value is not None and value >= n

    await wait_until(lambda: spooled(first, 3), timeout_s=30, what="agent A spooling 3 samples")
    a_epoch = int(first.metric("capwatch_agent_epoch") or 0)
    assert a_epoch > 10**12
    await asyncio.to_thread(first.kill)

    second = AgentProcess(mosquitto, spool, log)
    agents.append(second)
    await wait_until(
        lambda: second.metric("capwatch_agent_epoch") == a_epoch + 1, what="agent B (next epoch)"
    )
    assert second.metric("capwatch_agent_dropped_total") == 0
    b_taken = second.metric("capwatch_agent_samples_total") or 0
    await wait_until(
        lambda: (second.metric("capwatch_agent_samples_total") or 0) >= b_taken + 2,
        what="agent B spooling",
    )

    await asyncio.to_thread(mosquitto.start)
    await wait_until(
        lambda: any(e == a_epoch + 1 and s >= 4 for e, s in stored_seqs(db)),
        timeout_s=30,
        what="B's samples",
    )
    await asyncio.to_thread(second.stop)
    rows = stored_seqs(db)
    a_seqs = [s for e, s in rows if e == a_epoch]
    b_seqs = [s for e, s in rows if e == a_epoch + 1]
    assert len(a_seqs) >= 3
    assert a_seqs == list(range(len(a_seqs)))
    assert b_seqs == list(range(len(b_seqs)))
    assert rows == sorted(rows)  # arrived in order: all of A's epoch, then B's


async def _query_json(*args: str) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(collector_json, "query", *args)
    return result


async def test_a_gap_in_seq_is_listed_by_query_gaps_and_fires_node_samples_missing(
    mosquitto: MosquittoBroker,
    collector_runner: CollectorRunner,
) -> None:
    """Epoch 3 sends seq 0, 1, 2, 7; epoch 4 starts at 0: one gap of 4 samples after seq 2
    (the restart is none), in ``--gaps``, the live view's counters and NodeSamplesMissing."""
    collector_runner.settings = collector_runner.settings.model_copy(
        update={
            "alerts": collector_runner.settings.alerts.model_copy(update={"eval_interval_s": 0.5}),
        }
    )
    collector = await collector_runner.start()
    sim = FleetSimulator(1, gpus_per_node=1, seed=5, interval_s=1)
    node = sim.node_ids[0]
    now = time.time()
    sent = [(3, 0), (3, 1), (3, 2), (3, 7), (4, 0), (4, 1)]
    at = [0, 1, 2, 7, 8, 9]  # one interval (1 s) per seq, as the agent numbers them
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="gappy") as client:
        for k, (epoch, seq) in zip(at, sent, strict=True):
            sample = msgspec.structs.replace(sim.sample(0, now - 60 + k, seq), epoch=epoch)
            await client.publish(sample_topic(node), encode(sample), qos=1)
    await wait_until(
        lambda: value(collector.ingest_metrics.samples) == len(sent), what="the samples"
    )
    await wait_until(
        lambda: (
            db_rows(
                collector_runner.db,
                "SELECT state FROM alerts WHERE rule = ?",
                ("NodeSamplesMissing",),
            )
            == [("firing",)]
        ),
        what="NodeSamplesMissing firing",
    )
    assert (collector.live.gaps_total, collector.live.missing_total) == (1, 4)

    db = str(collector_runner.db)
    result = await _query_json("--db", db, "--node", node, "--gaps", "--since", "1h")
    assert result["missing"] == 4
    (gap,) = result["gaps"]
    assert (gap["epoch"], gap["after_seq"], gap["next_seq"], gap["missing"]) == (3, 2, 7, 4)
    assert gap["to_ts"] - gap["from_ts"] == pytest.approx(5.0, abs=0.01)


async def test_simulate_reconnects_after_a_broker_restart_and_every_sample_isstored_seqs(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """``agent simulate``'s publisher outlives a broker restart: it reconnects, sends again
    what was in flight, goes on ticking; every generated sample ends up stored."""
    collector = await collector_runner.start()
    sim = FleetSimulator(5, gpus_per_node=1, seed=9, interval_s=1)
    stop = asyncio.Event()
    task = asyncio.create_task(publish_fleet(fast_mqtt(mosquitto), sim, stop=stop, workers=4))
    db = collector_runner.db
    await wait_until(lambda: count_samples(db) >= 10, what="two ticks before the restart")
    await asyncio.to_thread(mosquitto.restart, 1.5)
    assert not task.done()
    before = count_samples(db)
    await wait_until(lambda: count_samples(db) >= before + 10, what="ticks after the restart")
    stop.set()
    async with asyncio.timeout(30):
        stats = await task
    assert stats.reconnects >= 1
    await wait_until(
        lambda: count_samples(db) == 5 * stats.ticks, what=f"all {5 * stats.ticks} samples"
    )
    assert value(collector.ingest_metrics.samples) >= 5 * stats.ticks


def test_simulate_stops_on_sigterm_with_its_broker_gone(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """``agent simulate`` connected, then the broker stops: a SIGTERM (Ctrl-C in the demo
    sends SIGINT to the broker and the simulator together) ends it within the stop grace,
    exit 0 with its figures, not after a reconnect that never comes (it waited for ever to
    send what it had queued; the demo SIGKILLed it after 15 s)."""
    log = tmp_path / "simulate.log"
    argv = [sys.executable, "-m", "agent", "simulate", "--nodes", "3", "--interval", "1"]
    argv += ["--host", mosquitto.host, "--port", str(mosquitto.port)]
    env = {**os.environ, "CAPWATCH_MQTT__RECONNECT_MAX_S": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(2.5)  # connected, a few ticks sent
        assert proc.poll() is None, log.read_text()
        mosquitto.stop()
        deadline = time.monotonic() + 20
        while "simulator_disconnected" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(1.5)  # more ticks queue while it waits for the broker
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=STOP_GRACE_S + 10)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()
    assert took < STOP_GRACE_S + 3, f"{took:.1f} s"
    assert "simulator_stopped_unsent" in log.read_text()
    assert "nodes=3 ticks=" in log.read_text()


# -- the store's watermark: a broker that loses its state loses nothing ------------------------


@pytest.mark.parametrize("mosquitto", [{"persistence": False}], indirect=True)
async def test_a_broker_killed_without_persistence_while_the_collector_is_away_loses_nothing(
    mosquitto: MosquittoBroker,
    collector_runner: CollectorRunner,
    agents: list[AgentProcess],
    tmp_path: Path,
) -> None:
    """Three agents publish through their spools; the collector stops, samples queue in the
    broker (acknowledged to the agents); the broker is SIGKILLed and comes back empty (no
    persistence: the collector's session and its queue are gone). The collector returns, its
    watermarks report the hole, the agents send their held samples again: every seq each
    agent took is stored, once."""
    await collector_runner.start()
    db = collector_runner.db
    fleet = start_agents(mosquitto, tmp_path, agents, 3)
    await wait_watermarks(fleet, 2)
    await collector_runner.stop()
    queued_from = {a.node: len(stored_seqs(db, a.node)) for a in fleet}
    await wait_acknowledged(fleet, 3)  # by the broker, stored nowhere
    await asyncio.to_thread(mosquitto.kill)
    await asyncio.to_thread(mosquitto.start)
    collector = await collector_runner.start()
    await wait_until(
        lambda: all(len(stored_seqs(db, a.node)) > queued_from[a.node] + 4 for a in fleet),
        timeout_s=30,
        what="samples after the collector's return",
    )
    assert value(collector.reader_metrics.sessions_lost) == 1  # the broker forgot everything
    counts = await stop_and_count(db, fleet)
    for node, (taken, rows, distinct) in counts.items():
        assert (rows, distinct) == (taken, taken), node  # 0 lost, none stored twice
    resent = sum(1 for a in fleet if '"spool_resend"' in a.log.read_text())
    assert resent == len(fleet)  # each agent sent its held samples again
