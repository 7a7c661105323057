"""Each node's ingest budget end to end (real Mosquitto, a real collector): what a node
legitimately sends fast, a replayed spool or the broker's backlog after the collector was
away, is never refused as ``rate_limited``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from agent.publisher import Publisher
from agent.simulate import FleetSimulator
from agent.spool import Spool
from collector import parts
from collector.counters import value
from collector.ingest.validate import Ingestor
from collector.live import LiveView
from collector.localbroker import MosquittoBroker
from collector.settings import CollectorMqttSettings, CollectorSettings
from shared.budget import NodeBudget
from shared.clock import SystemClock
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


@contextlib.contextmanager
def _agent_replaying(
    broker: MosquittoBroker, spool_dir: Path, sim: FleetSimulator, backlog: int
) -> Iterator[Publisher]:
    """A node's agent with ``backlog`` samples spooled, replaying them at its pace (half of
    :data:`BUDGET`) on an event loop of its own, in a thread: holding the test's loop (the
    collector's) does not hold the agent."""
    node, now = sim.node_ids[0], time.time()
    spool = Spool(spool_dir, max_bytes=64 << 20, max_age_s=86_400)
    spool.open()
    for seq in range(backlog):
        spool.append(encode(sim.sample(0, now - (backlog - seq), seq)))
    inventory = encode(sim.inventory(0, now))
    publisher = Publisher(
        fast_mqtt(broker), node, spool, lambda: inventory, time.time, budget=BUDGET
    )
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(publisher.run(stop),))
    thread.start()
    try:
        yield publisher
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        loop.close()
        spool.close()


async def _hold_the_loop_while(publisher: Publisher, *, sent: int, then: int) -> None:
    """Once the agent has published ``sent`` samples, hold this event loop (a long garbage
    collection, a blocking write to a slow disk, SIGSTOP: no disconnect) until it has
    published ``then``: meanwhile the broker queues them for the collector, who reads them
    all at once after."""
    await wait_until(lambda: publisher.published >= sent, what=f"{sent} samples published")
    deadline = time.monotonic() + 30
    while publisher.published < then and time.monotonic() < deadline:
        time.sleep(0.05)  # noqa: ASYNC251 (the point: nothing else on this loop runs)
    assert publisher.published >= then, "the agent stopped publishing"


async def test_a_backlog_queued_while_the_collectors_loop_was_held_is_not_rate_limited(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner, tmp_path: Path
) -> None:
    """An agent replays 80 samples at its pace (10 a second); the collector's event loop is
    held for the 40 it sends meanwhile (4 s, no disconnect), which the broker then delivers
    at once: all stored, none refused. Uncredited, the 20 of the burst passed and ~20 were
    refused and lost."""
    _budgeted(collector_runner)
    collector = await collector_runner.start()
    sim = FleetSimulator(1, gpus_per_node=8, seed=13, interval_s=1.0, epoch=0)
    node = sim.node_ids[0]
    refused = collector.ingest_metrics.rejected_by["rate_limited"]
    with _agent_replaying(mosquitto, tmp_path / "spool", sim, BACKLOG) as publisher:
        await _hold_the_loop_while(publisher, sent=20, then=60)
        await wait_until(
            lambda: count_samples(collector_runner.db, node) + value(refused) >= BACKLOG,
            timeout_s=60,
            what="the whole backlog stored or refused",
        )
    assert value(refused) == 0
    assert count_samples(collector_runner.db, node) == BACKLOG


async def test_the_leaders_feed_after_its_loop_was_held_rate_limits_nothing(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """The share group leader's live feed (QoS 0, into the view only) while an agent
    replays: the leader's loop held for 40 of its samples, which then arrive at once. None
    is refused, the view has the last one and counts no gap. Uncredited, ~20 were counted
    as the node's rate_limited rejects, and the view missed them."""
    settings = CollectorSettings(
        mqtt=CollectorMqttSettings(
            host=mosquitto.host, port=mosquitto.port, share_group="site", reconnect_min_s=0.2
        ),
        client_id="collector-a",
        ingest_budget=BUDGET,
    )
    _, connect = parts.mqtt_connectors(settings, None, 1 << 20)
    view = LiveView(from_feed=True)
    ingestor = Ingestor(SystemClock(), live=view, budget=BUDGET)
    sim = FleetSimulator(1, gpus_per_node=8, seed=14, interval_s=1.0, epoch=1)
    node = sim.node_ids[0]
    subscribed = asyncio.Event()
    feed = asyncio.create_task(
        parts.live_feed(
            connect, settings, ingestor.observe, subscribed.set, stalls=ingestor.feed_stalls
        )
    )

    def latest() -> int | None:
        st = view.get(node)
        return None if st is None or st.sample is None else st.sample.seq

    try:
        await asyncio.wait_for(subscribed.wait(), 10)  # after the SUBACK
        with _agent_replaying(mosquitto, tmp_path / "spool", sim, BACKLOG) as publisher:
            await _hold_the_loop_while(publisher, sent=20, then=60)
            await wait_until(
                lambda: publisher.published >= BACKLOG and latest() == BACKLOG - 1,
                timeout_s=30,
                what="the last sample in the view",
            )
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
    st = view.get(node)
    assert st is not None
    assert view.rejects(st, time.time(), 3600, "rate_limited") == 0
    assert (view.gaps_total, view.missing_total) == (0, 0)
