"""Forgetting a node while the collector runs, and across its restart: a real Mosquitto, a
real collector on each backend, a real webhook receiver."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from pydantic import HttpUrl

from agent.service import AgentService
from agent.simulate import FleetSimulator
from collector.localbroker import MosquittoBroker
from collector.paths import StoreTarget, parse_target
from collector.redfish.settings import BmcSettings, RedfishSettings
from collector.service import Collector
from collector.settings import ReceiverSettings, RouteSettings
from shared.schema import NodeStatus, encode
from shared.topics import inventory_topic, sample_topic, status_topic, watermark_topic
from tests.collector.alerts.receiver import Receiver
from tests.collector.governance.fleet import cli
from tests.collector.governance.test_forget_cli import retained
from tests.collector.redfish.conftest import PASSWORD, USER, write_credentials
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import CollectorRunner
from tests.redfish import RACKMOUNT_2022, MockupBmc

pytestmark = pytest.mark.integration


class _Node:
    """One simulated node publishing through the broker as its agent would."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.sim = FleetSimulator(1, gpus_per_node=2, seed=5, interval_s=1, epoch=1)
        self.name = self.sim.node_ids[0]
        self.seq = 0

    async def send(self, *, status: str | None = None, sample: bool = False) -> None:
        now = time.time()
        async with aiomqtt.Client(self.broker.host, self.broker.port, identifier=self.name) as c:
            if status == "online":
                inventory = encode(self.sim.inventory(0, now))
                await c.publish(inventory_topic(self.name), inventory, qos=1, retain=True)
            if status is not None:
                st = NodeStatus(v=1, node=self.name, status=status, ts=now)  # type: ignore[arg-type]
                await c.publish(status_topic(self.name), encode(st), qos=1, retain=True)
            if sample:
                payload = encode(self.sim.sample(0, now, self.seq))
                self.seq += 1
                await c.publish(sample_topic(self.name), payload, qos=1)

    @property
    def topics(self) -> list[str]:
        n = self.name
        return [status_topic(n), inventory_topic(n), watermark_topic(n)]


async def _forget(db: StoreTarget, broker: MosquittoBroker, *args: str) -> tuple[int, str, str]:
    """The command, in a thread (it runs its own event loop, as in its own process)."""
    argv = ("inventory", "forget", *args, "--db", str(db), "--port", str(broker.port))
    return await asyncio.to_thread(cli, *argv)


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback."""
    with Receiver().serve() as receiver:
        yield receiver


SKEW_S = 1.0
"""The collectors' ``max_clock_skew_s``: a message stamped more than this after a node's
forget brings it back."""


def _runner(broker: MosquittoBroker, db: StoreTarget, rx: Receiver) -> CollectorRunner:
    """A collector evaluating every 0.5 s, NodeOffline firing at once, notifying ``rx``."""
    runner = CollectorRunner(broker, db)
    s = runner.settings
    runner.settings = s.model_copy(
        update={
            "expected_interval_s": 1.0,
            "max_clock_skew_s": SKEW_S,
            "alerts": s.alerts.model_copy(update={"eval_interval_s": 0.5, "offline_for_s": 0.0}),
            "receivers": [ReceiverSettings(name="ops", url=HttpUrl(rx.url), timeout_s=5)],
            "routes": [RouteSettings(group_wait="0s", group_interval="0s")],
        }
    )
    return runner


async def _past_the_forget(db: StoreTarget) -> None:
    """Until a message stamped now is stamped after the last forget by more than
    :data:`SKEW_S` (one the collector takes as sent after it)."""
    at = db_rows(db, "SELECT max(at) FROM forgotten_nodes")[0][0]
    await wait_until(lambda: time.time() > at + SKEW_S, what="past the forget")


def _notified(rx: Receiver, node: str) -> list[tuple[str, str]]:
    """(alertname, status) of each notification about ``node``, in order."""
    out = []
    for r in rx.received():
        body = json.loads(r.body)
        for alert in body["alerts"]:
            if alert["labels"].get("node") == node:
                out.append((alert["labels"]["alertname"], alert["status"]))
    return out


async def test_a_running_collector_stops_tracking_a_forgotten_node(
    mosquitto: MosquittoBroker, store_url: StoreTarget, rx: Receiver
) -> None:
    """A node goes offline (NodeOffline firing, notified); forget is refused while its last
    sample is fresh, then done: the collector drops it from its live view and watermarks,
    NodeOffline is notified resolved at once (not after its 5 min keep_firing_for), the
    broker holds none of its retained messages, and no watermark of it is written again.
    Its next message makes it a new node."""
    runner = _runner(mosquitto, store_url, rx)
    collector = await runner.start()
    try:
        node = _Node(mosquitto)
        await node.send(status="online", sample=True)
        await wait_until(
            lambda: bool(
                db_rows(store_url, "SELECT 1 FROM watermarks WHERE node = ?", (node.name,))
            ),
            what="its watermark stored",
        )
        await node.send(status="offline")
        await wait_until(
            lambda: _notified(rx, node.name) == [("NodeOffline", "firing")], what="NodeOffline"
        )
        assert set(await retained(mosquitto, node.topics)) == set(node.topics)

        code, _, err = await _forget(store_url, mosquitto, node.name)
        assert code == 2, err
        assert "sent a sample" in err

        async def forgotten() -> bool:
            return (await _forget(store_url, mosquitto, node.name))[0] == 0

        deadline = time.monotonic() + 20
        while not await forgotten():  # its sample goes stale within a few seconds
            assert time.monotonic() < deadline, "forget never accepted"
            await asyncio.sleep(0.5)

        await wait_until(lambda: node.name not in collector.live, what="out of the live view")
        assert collector.watermarks.get(node.name) is None
        await wait_until(
            lambda: _notified(rx, node.name)[-1:] == [("NodeOffline", "resolved")],
            what="NodeOffline resolved",
            timeout_s=15,
        )
        assert await retained(mosquitto, node.topics) == {}
        assert db_rows(store_url, "SELECT node FROM nodes WHERE node = ?", (node.name,)) == []
        assert db_rows(store_url, "SELECT node FROM watermarks WHERE node = ?", (node.name,)) == []
        assert db_rows(store_url, "SELECT count(*) FROM samples WHERE node = ?", (node.name,)) == [
            (1,)
        ]
        assert db_rows(store_url, "SELECT count(*) FROM alerts") == [(0,)]

        await _past_the_forget(store_url)
        await node.send(status="online")  # back: a new node
        await wait_until(lambda: node.name in collector.live, what="a new node")
        await wait_until(
            lambda: bool(db_rows(store_url, "SELECT 1 FROM nodes WHERE node = ?", (node.name,))),
            what="its nodes row again",
        )
    finally:
        await runner.stop()


async def test_a_node_forgotten_while_the_collector_is_down_stays_forgotten(
    mosquitto: MosquittoBroker, store_url: StoreTarget, rx: Receiver
) -> None:
    """Forgotten while no collector runs: the next one neither loads it into its live view
    nor gets its retained messages, and resolves its firing alert, notified."""
    runner = _runner(mosquitto, store_url, rx)
    collector: Collector = await runner.start()
    node = _Node(mosquitto)
    await node.send(status="offline")
    await wait_until(lambda: node.name in collector.live, what="the node")
    await wait_until(
        lambda: _notified(rx, node.name) == [("NodeOffline", "firing")], what="NodeOffline"
    )
    await runner.stop()
    code, _, err = await _forget(store_url, mosquitto, node.name)
    assert code == 0, err
    try:
        collector = await runner.start()
        await wait_until(
            lambda: _notified(rx, node.name)[-1:] == [("NodeOffline", "resolved")],
            what="NodeOffline resolved after the restart",
        )
        assert node.name not in collector.live
        assert db_rows(store_url, "SELECT node FROM nodes WHERE node = ?", (node.name,)) == []
    finally:
        await runner.stop()


async def test_what_the_broker_queued_while_the_collector_was_down_does_not_bring_it_back(
    mosquitto: MosquittoBroker, store_url: StoreTarget, rx: Receiver
) -> None:
    """The node samples on while no collector runs, then stops (offline): the broker queues
    it all for the collector's persistent session. Forgotten meanwhile, the node stays
    forgotten when the next collector drains that backlog: each message dropped as
    ``forgotten`` (acknowledged: not delivered again), none stored, no nodes, rejects or
    quarantine row, no alert. A sample stamped after the forget brings it back."""
    runner = _runner(mosquitto, store_url, rx)
    collector = await runner.start()
    node = _Node(mosquitto)
    await node.send(status="online", sample=True)
    samples = "SELECT count(*) FROM samples WHERE node = ?"
    await wait_until(lambda: db_rows(store_url, samples, (node.name,)) == [(1,)], what="stored")
    await runner.stop()
    for _ in range(3):
        await node.send(sample=True)
    await node.send(status="offline")
    code, _, err = await _forget(store_url, mosquitto, node.name, "--force")
    assert code == 0, err
    try:
        collector = await runner.start()
        metrics = collector.ingestor.metrics
        await wait_until(
            lambda: metrics.counter_rows()["rejected_forgotten"] == 4, what="the backlog dropped"
        )
        await runner.stop()  # everything it took in committed
        assert node.name not in collector.live
        assert db_rows(store_url, samples, (node.name,)) == [(1,)]
        for table in ("nodes", "node_rejects", "quarantine"):
            sql = f"SELECT count(*) FROM {table} WHERE node = ?"
            assert db_rows(store_url, sql, (node.name,)) == [(0,)], table
        assert _notified(rx, node.name) == []
        assert db_rows(
            store_url, "SELECT value FROM counters WHERE name = 'rejected_forgotten'"
        ) == [(4,)]

        collector = await runner.start()  # acknowledged: nothing delivered again
        await _past_the_forget(store_url)
        await node.send(sample=True)
        await wait_until(lambda: node.name in collector.live, what="back: a new node")
        await wait_until(
            lambda: bool(db_rows(store_url, "SELECT 1 FROM nodes WHERE node = ?", (node.name,))),
            what="its nodes row again",
        )
        assert db_rows(store_url, samples, (node.name,)) == [(2,)]
        assert collector.ingestor.metrics.counter_rows()["rejected_forgotten"] == 0
    finally:
        await runner.stop()


async def test_a_forgotten_nodes_bmc_still_polled_does_not_put_its_reading_back(
    mosquitto: MosquittoBroker, store_url: StoreTarget, rx: Receiver, tmp_path: Path
) -> None:
    """Its BMC still in ``[[redfish.bmcs]]`` (a real Redfish service on loopback, polled
    every 0.2 s): after the pickup of its forget, the collector stores no reading of it
    again, while it goes on storing another node's."""
    creds = write_credentials(
        tmp_path / "bmc.toml", {"default": {"username": USER, "password": PASSWORD}}
    )
    node = _Node(mosquitto)
    polled = "SELECT received FROM polled_power WHERE scope = 'node' AND name = ?"
    with MockupBmc(RACKMOUNT_2022, username=USER, password=PASSWORD) as bmc:
        runner = _runner(mosquitto, store_url, rx)
        bmcs = [BmcSettings(node=n, url=bmc.url) for n in (node.name, "witness")]  # type: ignore[arg-type]
        runner.settings = runner.settings.model_copy(
            update={"redfish": RedfishSettings(credentials_file=creds, interval_s=0.2, bmcs=bmcs)}
        )
        collector = await runner.start()
        try:
            await node.send(status="offline")
            await wait_until(
                lambda: bool(db_rows(store_url, polled, (node.name,))), what="its reading stored"
            )
            code, _, err = await _forget(store_url, mosquitto, node.name, "--store-only")
            assert code == 0, err
            await wait_until(lambda: collector.live.was_forgotten(node.name), what="the pickup")
            picked = time.time()
            await wait_until(
                lambda: db_rows(store_url, polled, ("witness",))[0][0] > picked + 0.5,
                what="a reading polled after the pickup stored",
            )
            assert db_rows(store_url, polled, (node.name,)) == []
        finally:
            await runner.stop()


async def test_a_node_whose_agent_ran_through_its_forget_comes_back_with_its_inventory(
    mosquitto: MosquittoBroker, store_url: StoreTarget, rx: Receiver, agent: AgentService
) -> None:
    """A real agent runs through its node's forget, cut off from the broker (the broker
    down: its network, say): when it reconnects it announces itself again, its inventory
    (stamped when the agent started, before the forget) and its status (stamped now). The
    node comes back as a new node with its inventory: the status, after the forget, goes
    first. (Inventory first, the inventory was dropped as ``forgotten`` and the node came
    back without it until its agent restarted: no pool, no capacity counted it.)"""
    node = agent.settings.node_id
    runner = _runner(mosquitto, store_url, rx)
    collector = await runner.start()
    inventory = "SELECT 1 FROM nodes WHERE node = ? AND inventory IS NOT NULL"
    try:
        await wait_until(
            lambda: bool(db_rows(store_url, inventory, (node,))), what="its inventory stored"
        )
        await asyncio.to_thread(mosquitto.stop)
        code, _, err = await _forget(store_url, mosquitto, node, "--force", "--store-only")
        assert code == 0, err
        await wait_until(lambda: collector.live.was_forgotten(node), what="the pickup")
        await _past_the_forget(store_url)
        await asyncio.to_thread(mosquitto.start)
        await wait_until(lambda: node in collector.live, what="back: a new node")
        await wait_until(
            lambda: bool(db_rows(store_url, inventory, (node,))), what="its inventory again"
        )
        state = collector.live.get(node)
        assert state is not None
        assert state.inventory is not None
    finally:
        await runner.stop()


async def test_a_share_group_brings_a_forgotten_node_back_with_its_inventory_at_every_member(
    mosquitto: MosquittoBroker, postgres_url: str, rx: Receiver
) -> None:
    """Two collectors in a share group on one PostgreSQL store: only the samples are shared
    (``$share/...``); the inventory and the status come through plain filters, so every
    member gets both, in the order the agent sent them, and holds the inventory its agent
    stamped before the forget until the status that brings the node back. An agent not yet
    upgraded sends the inventory first: the node comes back with it in every member's live
    view and in the store, whichever member leads."""
    store = parse_target(postgres_url)
    runners = [_runner(mosquitto, store, rx) for _ in "ab"]
    for name, runner in zip("ab", runners, strict=True):
        s = runner.settings
        runner.settings = s.model_copy(
            update={
                "mqtt": s.mqtt.model_copy(update={"share_group": "site"}),
                "client_id": f"collector-{name}",
            }
        )
    members = [await r.start() for r in runners]
    node = _Node(mosquitto)
    inventory = "SELECT 1 FROM nodes WHERE node = ? AND inventory IS NOT NULL"
    try:
        await node.send(status="online")
        stamped = time.time()
        await wait_until(lambda: _have_inventory(members, node.name), what="its inventory")
        code, _, err = await _forget(store, mosquitto, node.name, "--force", "--store-only")
        assert code == 0, err
        await wait_until(
            lambda: all(m.live.was_forgotten(node.name) for m in members), what="each pickup"
        )
        assert db_rows(store, inventory, (node.name,)) == []
        await _past_the_forget(store)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=node.name) as c:
            old = encode(node.sim.inventory(0, stamped))  # stamped at its start: before
            await c.publish(inventory_topic(node.name), old, qos=1, retain=True)
            st = NodeStatus(v=1, node=node.name, status="online", ts=time.time())
            await c.publish(status_topic(node.name), encode(st), qos=1, retain=True)
        await wait_until(lambda: _have_inventory(members, node.name), what="back, inventory")
        await wait_until(
            lambda: bool(db_rows(store, inventory, (node.name,))), what="its inventory stored"
        )
    finally:
        for r in runners:
            await r.stop()


def _have_inventory(collectors: list[Collector], node: str) -> bool:
    """Whether every one of ``collectors`` holds ``node`` with its inventory."""
    states = [c.live.get(node) for c in collectors]
    return all(st is not None and st.inventory is not None for st in states)
