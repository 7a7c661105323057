"""Several collectors on one broker: a shared subscription for samples (``--share-group``).

What these tests pin down, on a real Mosquitto 2 (and NATS, which lacks the feature):

- each sample reaches exactly one member; every inventory and status reaches every member;
- a member that dies keeps its share: Mosquitto goes on routing the group's samples to the
  dead member's persistent session (round-robin over members, connected or not) and hands
  them over, with what it held unacknowledged, when that client id returns. Nothing is
  re-routed to the living member, nothing is lost, nothing is stored twice;
- NATS grants the ``$share/...`` filter and then delivers nothing through it;
- the leader's live feed, subscribed again after a lost connection, counts no gap for what
  it missed meanwhile (the members' sessions took it), and still counts a skipped seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiomqtt
import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector import parts
from collector.ingest.packets import Message
from collector.ingest.reader import Subscriber
from collector.ingest.subscriber import MqttSubscriber
from collector.ingest.validate import Ingestor
from collector.live import LiveView
from collector.localbroker import BrokerProcess, MosquittoBroker
from collector.localcollector import start_member
from collector.natsbroker import NatsBroker
from collector.settings import CollectorMqttSettings, CollectorSettings
from shared.clock import SystemClock
from shared.schema import encode
from shared.topics import (
    LIVE_SUBSCRIPTION,
    PREFIX,
    collector_subscriptions,
    inventory_topic,
    sample_topic,
    status_topic,
)
from tests.helpers import count_samples, db_rows, wait_until
from tests.integration.conftest import fast_mqtt
from tests.integration.secure_broker import DeployedBroker, make_passwd

pytestmark = pytest.mark.integration

_GROUP = "collectors"
_NODES = 12


@asynccontextmanager
async def _member(broker: BrokerProcess, client_id: str) -> AsyncIterator[MqttSubscriber]:
    """A collector's subscriber in the share group (persistent session), subscribed."""
    sub = MqttSubscriber(broker.host, broker.port, client_id=client_id, clean_session=False)
    async with sub:
        await sub.subscribe([(t, 1) for t in collector_subscriptions(_GROUP)])
        yield sub


async def _publish(broker: BrokerProcess, seqs: range, *, retained: bool = False) -> None:
    """Sample ``seq`` of every node (payload ``n<i>:<seq>``); with ``retained`` first each
    node's retained inventory and status."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="publisher") as client:
        for i in range(_NODES):
            node = f"n{i}"
            if retained:
                await client.publish(inventory_topic(node), b"inv", qos=1, retain=True)
                await client.publish(status_topic(node), b"online", qos=1, retain=True)
            for seq in seqs:
                await client.publish(sample_topic(node), f"{node}:{seq}".encode(), qos=1)


async def _take(sub: MqttSubscriber, n: int, *, ack: bool = True) -> list[Message]:
    """At least ``n`` messages from ``sub`` (fails after 10 s), acknowledged unless not."""
    got: list[Message] = []
    async with asyncio.timeout(10):
        while len(got) < n:
            got += await sub.next_batch()
    if ack:
        sub.ack(m.packet_id for m in got if m.packet_id is not None)
    return got


async def _settle(sub: MqttSubscriber) -> list[Message]:
    """What reaches ``sub`` within a round trip (an UNSUBACK) plus 0.3 s, without waiting
    for a count: for asserting that nothing more came."""
    await sub.unsubscribe([f"{PREFIX}/no-such-topic"])
    await asyncio.sleep(0.3)
    got: list[Message] = []
    while sub._ready:  # next_batch would wait on nothing
        got += await sub.next_batch()
    return got


def _samples(messages: list[Message]) -> list[str]:
    return [m.payload.decode() for m in messages if m.topic.endswith("/sample")]


async def test_each_sample_reaches_one_member_and_retained_facts_reach_all(
    mosquitto: MosquittoBroker,
) -> None:
    """Two members: the samples are split between them, none twice, none lost; each gets
    every node's inventory and status."""
    async with _member(mosquitto, "a") as a, _member(mosquitto, "b") as b:
        await _publish(mosquitto, range(10), retained=True)
        total = _NODES * 10
        got_a = await _take(a, 2 * _NODES, ack=True)
        got_b = await _take(b, 2 * _NODES, ack=True)
        got_a += await _settle(a)
        got_b += await _settle(b)
    samples_a, samples_b = _samples(got_a), _samples(got_b)
    assert len(samples_a) + len(samples_b) == total
    assert set(samples_a).isdisjoint(samples_b)
    assert len(set(samples_a) | set(samples_b)) == total
    assert samples_a  # both members took part
    assert samples_b
    for got in (got_a, got_b):
        kinds = sorted(m.topic for m in got if not m.topic.endswith("/sample"))
        assert kinds == sorted(
            [inventory_topic(f"n{i}") for i in range(_NODES)]
            + [status_topic(f"n{i}") for i in range(_NODES)]
        )


async def test_a_dead_members_share_waits_in_its_session_until_it_returns(
    mosquitto: MosquittoBroker,
) -> None:
    """Member a dies holding unacknowledged samples (its connection dropped, no
    DISCONNECT). Mosquitto 2 re-routes nothing: b gets its own half of what is published
    next, a's half queues in a's session; a's return brings the held ones again (dup) and
    the queued ones. Across the two, every sample once."""
    b = MqttSubscriber(mosquitto.host, mosquitto.port, client_id="b", clean_session=False)
    async with b:
        await b.subscribe([(t, 1) for t in collector_subscriptions(_GROUP)])
        async with _member(mosquitto, "a") as a:
            await _publish(mosquitto, range(2))
            held = _samples(await _take(a, _NODES, ack=False))  # never acknowledged
            before = _samples(await _take(b, _NODES))
            a._abort_now()  # the connection drops as in a crash
        await _publish(mosquitto, range(2, 6))
        during = _samples(await _take(b, 2 * _NODES)) + _samples(await _settle(b))
        async with MqttSubscriber(
            mosquitto.host, mosquitto.port, client_id="a", clean_session=False
        ) as back:
            assert back.session_present
            returned = await _take(back, _NODES + 2 * _NODES)
            returned += await _settle(back)
    assert len(held) == len(before) == _NODES
    # b got exactly its half while a was away: nothing was re-routed to it.
    assert len(during) == 2 * _NODES
    redelivered = [m for m in returned if m.dup]
    assert sorted(_samples(redelivered)) == sorted(held)
    queued = _samples([m for m in returned if not m.dup])
    assert len(queued) == 2 * _NODES
    everything = {f"n{i}:{seq}" for i in range(_NODES) for seq in range(6)}
    stored = held + before + during + queued
    assert len(stored) == len(everything)
    assert set(stored) == everything


async def test_nats_grants_the_shared_filter_and_delivers_nothing(nats: NatsBroker) -> None:
    """NATS' MQTT has no shared subscriptions: it answers SUBACK with QoS 1 for
    ``$share/...`` and then never delivers a sample through it (a collector there would
    store no samples at all: deploy/README.md says so); the plain filters still work."""
    async with _member(nats, "a") as a:
        await _publish(nats, range(3), retained=True)
        got = await _take(a, 2 * _NODES)
        got += await _settle(a)
    assert _samples(got) == []
    assert len(got) == 2 * _NODES  # inventories and statuses only


# --- real collector processes ----------------------------------------------------------


@contextmanager
def _collector_process(
    broker: MosquittoBroker, db: Path, name: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``collector run`` in the share group, client id ``collector-<name>``."""
    proc = start_member(name, str(db), broker.port, None, log=log, group=_GROUP)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def _subscribed(db: Path) -> bool:
    return bool(db_rows(db, "SELECT value FROM meta WHERE key LIKE 'mqtt_filters %'"))


def _stored(db: Path) -> set[tuple[str, int]]:
    return {(str(n), int(t)) for n, t in db_rows(db, "SELECT node, ts_ms FROM samples")}


async def test_sigkilled_collectors_share_is_stored_when_it_returns(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Two ``collector run --share-group`` processes, each with its own store: the first
    ticks split between them; collector b is SIGKILLed; what is published meanwhile goes
    half to a and half into b's session; b's return stores the rest. Every sample is stored
    once, in exactly one of the two stores, and each store has every node's inventory."""
    db_a, db_b = tmp_path / "a.db", tmp_path / "b.db"
    sim = FleetSimulator(50, gpus_per_node=2, seed=5, interval_s=1)
    start = time.time() - 30
    mqtt = fast_mqtt(mosquitto)
    with _collector_process(mosquitto, db_a, "a", tmp_path / "a.log"):
        with _collector_process(mosquitto, db_b, "b", tmp_path / "b.log") as b:
            await wait_until(
                lambda: _subscribed(db_a) and _subscribed(db_b), what="both subscribed"
            )
            await publish_fleet(mqtt, sim, ticks=4, burst=True, start_ts=start)
            await wait_until(
                lambda: count_samples(db_a) + count_samples(db_b) == 200, what="first 200 samples"
            )
            b.kill()
            b.wait(timeout=20)
        at_kill_b = count_samples(db_b)
        later = FleetSimulator(50, gpus_per_node=2, seed=6, interval_s=1)
        await publish_fleet(mqtt, later, ticks=4, burst=True, start_ts=start + 4)
        await wait_until(lambda: count_samples(db_a) >= 200 - at_kill_b + 100, what="a's half")
        await asyncio.sleep(1.0)
        # Nothing re-routed: a stored its own half of the 200 new samples, no more.
        assert count_samples(db_a) == 200 - at_kill_b + 100
        assert count_samples(db_b) == at_kill_b
        with _collector_process(mosquitto, db_b, "b", tmp_path / "b.log"):
            await wait_until(
                lambda: count_samples(db_a) + count_samples(db_b) == 400,
                what="b's queued share stored after its return",
            )
    a, b_rows = _stored(db_a), _stored(db_b)
    assert a.isdisjoint(b_rows)
    assert len(a | b_rows) == 400
    for db in (db_a, db_b):
        assert db_rows(db, "SELECT count(*) FROM nodes WHERE inventory IS NOT NULL") == [(50,)]


async def test_the_shipped_acl_lets_both_collector_users_share_and_a_node_user_drops_a_share(
    tmp_path: Path,
) -> None:
    """deploy/'s config and ACL: capwatch-collector and capwatch-collector-2, each with its
    own session, split the samples through the shared filter. A node's user that joins the
    same group reads none of them, but Mosquitto 2.0 grants its subscription, counts it as
    a member and drops the samples it may not read: its share is lost (deploy/README.md)."""
    users = {u: f"pw-{u}" for u in ("capwatch-collector", "capwatch-collector-2", "n0", "n1")}
    with DeployedBroker(tmp_path / "broker", make_passwd(tmp_path / "passwd", users)) as broker:
        members = [
            MqttSubscriber(
                broker.host,
                broker.port,
                client_id=user,
                username=user,
                password=users[user],
                clean_session=False,
            )
            for user in ("capwatch-collector", "capwatch-collector-2", "n1")
        ]
        async with members[0] as a, members[1] as b, members[2] as intruder:
            for sub in (a, b, intruder):
                await sub.subscribe([(t, 1) for t in collector_subscriptions(_GROUP)])
            async with aiomqtt.Client(
                broker.host, broker.port, username="n0", password=users["n0"]
            ) as node:
                for seq in range(10):
                    await node.publish(sample_topic("n0"), f"n0:{seq}".encode(), qos=1)
            got_a = _samples(await _take(a, 1) + await _settle(a))
            got_b = _samples(await _take(b, 1) + await _settle(b))
            got_intruder = _samples(await _settle(intruder))
    assert got_a
    assert got_b
    assert got_intruder == []
    assert set(got_a).isdisjoint(got_b)
    # Round-robin over three members: the intruder's third never reached anyone.
    assert len(got_a) + len(got_b) == 10 - 10 // 3


async def test_a_member_with_a_plain_filter_too_gets_one_copy_at_qos_0(
    mosquitto: MosquittoBroker,
) -> None:
    """Why the leader's live feed has a connection of its own: Mosquitto 2.0 sends a member
    that also holds a plain QoS 0 filter for the samples one copy of each, at QoS 0, its own
    share included; a collector would never store (nor be asked to acknowledge) its share."""
    async with _member(mosquitto, "a") as a, _member(mosquitto, "b") as b:
        await a.subscribe([(LIVE_SUBSCRIPTION, 0)])
        await _publish(mosquitto, range(1))
        got_a = await _take(a, _NODES)
        got_a += await _settle(a)
        got_b = await _take(b, _NODES // 2)
        got_b += await _settle(b)
    assert sorted(_samples(got_a)) == sorted(f"n{i}:0" for i in range(_NODES))
    assert {m.qos for m in got_a} == {0}
    assert len(got_b) == _NODES // 2  # b keeps its half, at QoS 1
    assert {m.qos for m in got_b} == {1}


async def test_the_feed_subscribed_again_counts_nothing_it_missed_meanwhile(
    mosquitto: MosquittoBroker,
) -> None:
    """The leader's feed (a clean session) loses its connection: what the agent publishes
    until it subscribes again reaches the members' sessions, not the feed, and is no gap.
    A seq the agent skipped afterwards is one."""
    settings = CollectorSettings(
        mqtt=CollectorMqttSettings(
            host=mosquitto.host, port=mosquitto.port, share_group="site", reconnect_min_s=1.0
        ),
        client_id="collector-a",
    )
    _, live_connect = parts.mqtt_connectors(settings, None, 1 << 20)
    feeds: list[tuple[float, MqttSubscriber]] = []

    def connect() -> Subscriber:
        sub = live_connect()
        assert isinstance(sub, MqttSubscriber)
        feeds.append((time.monotonic(), sub))
        return sub

    view = LiveView(from_feed=True)
    ingestor = Ingestor(SystemClock(), live=view)
    sim = FleetSimulator(1, gpus_per_node=1, seed=7, interval_s=1, epoch=1)
    node = sim.node_ids[0]
    now = time.time()

    def seq_held() -> int | None:
        st = view.get(node)
        return None if st is None or st.sample is None else st.sample.seq

    async def send(client: aiomqtt.Client, *seqs: int) -> None:
        for seq in seqs:
            sample = sim.sample(0, now - 60 + seq, seq)
            await client.publish(sample_topic(node), encode(sample), qos=1)

    async def through_feed(client: aiomqtt.Client, *seqs: int) -> None:
        """Publish ``seqs`` (again every 0.2 s: the feed may not be subscribed yet; a repeat
        is a duplicate) until the last one is the view's latest."""
        async with asyncio.timeout(10):
            while seq_held() != seqs[-1]:
                await send(client, *seqs)
                await asyncio.sleep(0.2)

    feed = asyncio.create_task(
        parts.live_feed(connect, settings, ingestor.observe, view.feed_started)
    )
    try:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="agent") as agent:
            await through_feed(agent, 0, 1, 2)
            feeds[-1][1]._abort_now()
            await send(agent, 3, 4, 5)  # the feed is away for reconnect_min_s
            away = time.monotonic()
            await through_feed(agent, 6, 7)
            assert (view.gaps_total, view.missing_total) == (0, 0)
            assert len(feeds) == 2
            assert feeds[1][0] > away, "3, 4 and 5 were published while the feed was away"
            await through_feed(agent, 9)
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
    st = view.get(node)
    assert st is not None
    assert [(g.after_seq, g.missing) for g in st.gaps] == [(7, 1)]
