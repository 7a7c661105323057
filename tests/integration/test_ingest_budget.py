"""Each node's ingest budget end to end (real Mosquitto, a real collector): what a node
legitimately sends fast, a replayed spool or the broker's backlog after the collector was
away, is never refused as ``rate_limited``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from agent.publisher import Publisher
from agent.simulate import FleetSimulator
from agent.spool import Spool
from collector.counters import value
from collector.localbroker import MosquittoBroker
from shared.budget import NodeBudget
from shared.schema import encode
from shared.topics import sample_topic
from tests.helpers import count_samples, wait_until
from tests.integration.conftest import CollectorRunner, fast_mqtt

pytestmark = pytest.mark.integration

BUDGET = NodeBudget(messages_per_s=20, bytes_per_s=2_000_000, burst_s=1.0)
"""20 messages at once, then 20 a second: small, so that a test's backlog exceeds it."""
BACKLOG = 80


def _budgeted(runner: CollectorRunner) -> None:
    runner.settings = runner.settings.model_copy(update={"ingest_budget": BUDGET})


async def test_an_agent_replaying_its_spool_is_paced_under_the_budget_and_loses_nothing(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner, tmp_path: Path
) -> None:
    """An agent with 80 samples spooled (an outage) publishes them at half the budget: all
    80 are stored, none refused; unpaced, 60 of them would be over the budget."""
    _budgeted(collector_runner)
    collector = await collector_runner.start()
    sim = FleetSimulator(1, gpus_per_node=8, seed=11, interval_s=5.0, epoch=0)
    node, now = sim.node_ids[0], time.time()
    spool = Spool(tmp_path / "spool", max_bytes=64 << 20, max_age_s=86_400)
    spool.open()
    for seq in range(BACKLOG):
        spool.append(encode(sim.sample(0, now - 5 * (BACKLOG - seq), seq)))
    inventory = encode(sim.inventory(0, now))
    publisher = Publisher(
        fast_mqtt(mosquitto), node, spool, lambda: inventory, time.time, budget=BUDGET
    )
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        await wait_until(
            lambda: count_samples(collector_runner.db, node) >= BACKLOG,
            timeout_s=60,
            what="the whole backlog stored",
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        spool.close()
    assert value(collector.ingest_metrics.rejected_by["rate_limited"]) == 0
    assert publisher.paced_s > 1.0  # it did wait: 80 samples at 10 a second, 10 at once


async def test_the_brokers_backlog_after_the_collector_was_away_is_not_rate_limited(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """The broker keeps 80 samples of one node for the stopped collector's session; the
    collector starts and gets them all at once: all stored, none refused (its budget is
    credited with the time it was away)."""
    _budgeted(collector_runner)
    await collector_runner.start()
    await collector_runner.stop()
    sim = FleetSimulator(1, gpus_per_node=8, seed=12, interval_s=1.0)
    node, now = sim.node_ids[0], time.time()
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="budget-node") as c:
        for seq in range(BACKLOG):
            sample = sim.sample(0, now - (BACKLOG - seq), seq)
            await c.publish(sample_topic(node), encode(sample), qos=1)
    collector = await collector_runner.start()
    await wait_until(
        lambda: count_samples(collector_runner.db, node) >= BACKLOG,
        timeout_s=30,
        what="the broker's backlog stored",
    )
    assert value(collector.ingest_metrics.rejected_by["rate_limited"]) == 0
