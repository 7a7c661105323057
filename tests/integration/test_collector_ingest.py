"""The collector on a real Mosquitto: bad input is counted and skipped; restarts lose nothing."""

from __future__ import annotations

import time

import aiomqtt
import msgspec
import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.counters import value
from collector.localbroker import MosquittoBroker
from shared.clock import FakeClock
from shared.schema import NodeStatus, encode
from shared.topics import sample_topic, status_topic
from tests.helpers import count_samples, db_rows, wait_until
from tests.integration.conftest import CollectorRunner, fast_mqtt

pytestmark = pytest.mark.integration


async def test_malformed_and_mismatched_messages_are_counted_and_never_stored(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """Garbage, wrong version, wrong node, out-of-range values: counted, skipped, ingest goes on."""
    collector = await collector_runner.start()
    sim = FleetSimulator(2, gpus_per_node=2, seed=1, interval_s=5)
    now = time.time()
    good = sim.sample(0, now - 10, 0)
    good_payload = encode(good)
    as_dict = msgspec.json.decode(good_payload)
    wrong_version = msgspec.json.encode({**as_dict, "v": 2})
    bad_util = msgspec.json.encode({**as_dict, "gpus": [{**as_dict["gpus"][0], "util_pct": 150.0}]})
    other = sim.node_ids[1]
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="bad-publisher") as client:
        for topic, payload in [
            (sample_topic(other), b"{not json"),
            (sample_topic(other), wrong_version),
            (sample_topic(other), bad_util),
            (sample_topic(other), good_payload),  # topic node != payload node
            ("capwatch/v1/nodes/has space/sample", good_payload),  # not a node id
            (sample_topic(good.node), good_payload),  # the one good message
        ]:
            await client.publish(topic, payload, qos=1)

    await wait_until(lambda: count_samples(collector_runner.db) == 1, what="the good sample")
    c = collector.counter_values()
    assert c["rejected_not_json"] == 1
    assert c["rejected_version"] == 1
    assert c["rejected_invalid"] == 1
    assert c["rejected_topic_mismatch"] == 1
    assert c["rejected_bad_topic"] == 1
    assert c["rejected"] == 5
    assert db_rows(collector_runner.db, "SELECT DISTINCT node FROM samples") == [(good.node,)]

    # Still ingesting after all that.
    async with aiomqtt.Client(
        mosquitto.host, mosquitto.port, identifier="good-publisher"
    ) as client:
        await client.publish(sample_topic(other), encode(sim.sample(1, now - 5, 1)), qos=1)
    await wait_until(lambda: count_samples(collector_runner.db) == 2, what="ingest after rejects")


async def test_a_hostile_node_cannot_stop_or_poison_ingestion(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """The cases that once crash-looped the collector or were stored: all quarantined, acked."""
    collector = await collector_runner.start()
    sim = FleetSimulator(1, gpus_per_node=2, seed=4, interval_s=5)
    node = sim.node_ids[0]
    now = time.time()
    base = msgspec.json.decode(encode(sim.sample(0, now - 30, 0)))

    def variant(**changes: object) -> bytes:
        doc = msgspec.json.decode(msgspec.json.encode(base))
        for path, new in changes.items():
            target = doc
            *parents, leaf = path.split("__")
            for part in parents:
                target = target[int(part)] if part.isdigit() else target[part]
            target[int(leaf) if leaf.isdigit() else leaf] = new
        return msgspec.json.encode(doc)

    hostile = [
        variant(gpus__0__mem_used_bytes=2**62, gpus__1__mem_used_bytes=2**62),
        variant(disk_io__read_bytes_per_s=1e300),
        variant(gpus__0__energy_j=1e300),
        variant(cpu__load1=2**80),
        variant(cpu__per_core_pct=[1.0] * 150_000),
        variant(gpus__0__uuid="NaN"),
        variant(ts=now + 86_400),  # a day ahead
        variant(seq=2**64),
        variant(junk="@@").replace(b'"@@"', b"[" * 5000 + b"]" * 5000),  # past recursion limits
    ]
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="hostile") as client:
        for payload in hostile:
            await client.publish(sample_topic(node), payload, qos=1)
        await client.publish(sample_topic(node), encode(sim.sample(0, now - 5, 1)), qos=1)

    await wait_until(lambda: count_samples(collector_runner.db) == 1, what="the good sample")
    await wait_until(
        lambda: db_rows(collector_runner.db, "SELECT count(*) FROM quarantine") == [(9,)],
        what="nine quarantined messages",
    )
    reasons = db_rows(collector_runner.db, "SELECT reason FROM quarantine ORDER BY id")
    assert [r for (r,) in reasons] == ["invalid"] * 6 + ["clock_skew", "invalid", "not_json"]
    assert value(collector.ingest_metrics.rejected) == 9
    stored = db_rows(collector_runner.db, "SELECT seq, gpu_mem_used_bytes FROM samples")
    assert stored[0][0] == 1
    assert 0 <= stored[0][1] < 2**40


async def test_samples_published_while_collector_is_down_are_stored_after_restart(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """The persistent session makes the broker hold QoS 1 samples until the collector is back."""
    sim = FleetSimulator(20, gpus_per_node=8, seed=2, interval_s=1)
    await collector_runner.start()
    now = time.time()
    first = await publish_fleet(fast_mqtt(mosquitto), sim, ticks=5, burst=True, start_ts=now - 100)
    await wait_until(lambda: count_samples(collector_runner.db) == 100, what="first 100 samples")

    await collector_runner.stop()
    second = await publish_fleet(fast_mqtt(mosquitto), sim, ticks=10, burst=True, start_ts=now - 50)
    assert count_samples(collector_runner.db) == 100  # nobody was there to store them

    await collector_runner.start()
    total = first.published + second.published
    assert total == 300
    await wait_until(lambda: count_samples(collector_runner.db) == total, what="all 300 samples")
    seqs = db_rows(
        collector_runner.db,
        "SELECT count(DISTINCT seq) FROM samples WHERE node = ?",
        (sim.node_ids[7],),
    )
    assert seqs == [(15,)]


async def test_graceful_stop_commits_everything_received(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """Stopped mid-burst, the collector has stored every sample it took; the rest follows."""
    sim = FleetSimulator(50, gpus_per_node=8, seed=3, interval_s=1)
    collector = await collector_runner.start()
    stats = await publish_fleet(
        fast_mqtt(mosquitto), sim, ticks=20, burst=True, start_ts=time.time() - 60
    )
    await wait_until(
        lambda: value(collector.ingest_metrics.samples) >= 100, what="the burst arriving"
    )
    await collector_runner.stop()  # likely mid-stream: the rest stays queued at the broker
    taken = value(collector.ingest_metrics.samples)
    assert count_samples(collector_runner.db) == taken  # nothing taken was left unstored
    await collector_runner.start()
    await wait_until(
        lambda: count_samples(collector_runner.db) == stats.published,
        what=f"{stats.published} samples (had {taken} at stop)",
    )
    assert count_samples(collector_runner.db) == 1000
    assert db_rows(collector_runner.db, "SELECT count(DISTINCT node) FROM samples") == [(50,)]


async def test_retention_deletes_by_arrival_time_while_running(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """Samples that arrived before the window go, whatever their own timestamps say."""
    now = time.time()
    clock = FakeClock(start_wall=now)
    collector_runner.clock = clock
    collector_runner.settings = collector_runner.settings.model_copy(
        update={"retention_s": 600.0, "retention_check_s": 0.2, "retention_chunk_rows": 100}
    )
    await collector_runner.start()
    sim = FleetSimulator(10, gpus_per_node=2, seed=6, interval_s=1)
    old = await publish_fleet(fast_mqtt(mosquitto), sim, ticks=30, burst=True, start_ts=now - 100)
    await wait_until(lambda: count_samples(collector_runner.db) == 300, what="300 stored")

    clock.advance(700)  # the collector's clock: those 300 arrived 700 s ago now
    new = await publish_fleet(fast_mqtt(mosquitto), sim, ticks=5, burst=True, start_ts=now + 650)
    assert (old.published, new.published) == (300, 50)
    await wait_until(
        lambda: (
            count_samples(collector_runner.db) == 50
            and db_rows(collector_runner.db, "SELECT min(ts_ms) FROM samples")[0][0]
            >= round((now + 650) * 1000)
        ),
        what="only the 50 recent arrivals left",
    )
    assert collector_runner.collector is not None
    assert value(collector_runner.collector.writer_metrics.retention_deleted) == 300

    # A late sample (replayed after an outage): stamped 550 s ago, it arrives now. Once its
    # timestamp is past the window but its arrival is not, it stays.
    late_node = FleetSimulator(1, gpus_per_node=2, seed=7, interval_s=1, first_index=500)
    await publish_fleet(
        fast_mqtt(mosquitto), late_node, ticks=1, burst=True, start_ts=clock.time() - 550
    )
    await wait_until(lambda: count_samples(collector_runner.db) == 51, what="the late sample")

    def counters_flushed_at(t: float) -> bool:
        rows = db_rows(collector_runner.db, "SELECT max(updated) FROM counters")
        return bool(rows) and rows[0][0] is not None and rows[0][0] >= t

    clock.advance(100)  # its ts is now 650 s old; it arrived 100 s ago
    await wait_until(lambda: counters_flushed_at(clock.time()), what="a writer turn")
    clock.advance(5)  # one more turn: the retention pass of the previous one has finished
    await wait_until(lambda: counters_flushed_at(clock.time()), what="another writer turn")
    assert count_samples(collector_runner.db, late_node.node_ids[0]) == 1
    assert count_samples(collector_runner.db) == 51


async def test_a_restarted_collector_knows_each_nodes_last_stored_sample(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """A node that stays silent through a collector's restart: the new collector's live view
    starts from the store (as an elected leader's does), so the node is stale since its last
    stored sample, not "never sampled", and NodeStale says when that was."""
    sim = FleetSimulator(2, gpus_per_node=2, seed=5, interval_s=1)
    await collector_runner.start()
    stats = await publish_fleet(
        fast_mqtt(mosquitto), sim, ticks=2, burst=True, start_ts=time.time() - 30
    )
    db = collector_runner.db
    await wait_until(lambda: count_samples(db) == stats.published, what="the samples stored")
    await collector_runner.stop()
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="hung") as client:
        for node in sim.node_ids:  # online, as their agents say, but sampling no more
            status = NodeStatus(v=1, node=node, status="online", ts=time.time())
            await client.publish(status_topic(node), encode(status), qos=1, retain=True)
    collector = await collector_runner.start()
    await wait_until(
        lambda: sorted(st.status or "" for st in collector.live.nodes()) == ["online"] * 2,
        what="the retained statuses",
    )
    held = {st.node: st for st in collector.live.nodes()}
    assert set(held) == set(sim.node_ids)
    for st in held.values():
        assert st.sample is not None
        assert st.sample.ts > time.time() - 60  # the newest stored (stamped ~29 s ago)
        assert st.sample_received is not None
    stale = next(r for r in collector._rules if r.name == "NodeStale")
    lines = [i.values["last"] for i in stale.condition(collector.live, time.time() + 600)]
    assert len(lines) == 2
    assert "never" not in lines
