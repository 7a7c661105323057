"""A node's newest sample is one fact: the live view (rules, capacity, /metrics) and the
store's reads (``collector query``, a new leader's view, capacity and pools from the store)
name the same sample, whatever the node's clock did.

Through the real ingest path: a collector on a real Mosquitto, on each backend in turn;
samples published as agents send them (a clock stepped back, a restart behind the last
run's clock, the spool replaying late samples of that last run, an agent cloned with its
spool).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiomqtt
import msgspec
import psycopg
import pytest

from agent.simulate import FleetSimulator
from collector.capacity.fromstore import nodes_from_store
from collector.ingest.validate import sample_row
from collector.localbroker import MosquittoBroker
from collector.paths import PgTarget, StoreTarget, parse_target
from collector.store.db import Store
from collector.store.queries import latest_sample
from collector.store.reader import StoreReader
from shared.schema import Sample, encode
from shared.topics import sample_topic
from tests.helpers import collector_json, count_samples, db_rows, wait_until
from tests.integration.conftest import CollectorRunner

STEPPED, REPLAYED, RESTARTED, LATE, OLD_AGENT, WIPED, CLONED = NODES = FleetSimulator(7).node_ids
"""A node whose clock steps back; one whose clock steps back and whose spool then sends
again a sample from before the step that the broker lost; one whose agent restarts behind
its last run's clock; one whose clock steps back and which then sends a late sample of its
last run, stamped between; an agent from before epochs; one whose spool is wiped after its
second run (epoch 0 from seq 0 again); one whose agent was cloned with its spool (a second
sender in the same epoch, numbering again seqs the first had sent, stamped later)."""


@pytest.fixture
async def runner(
    mosquitto: MosquittoBroker, store_url: StoreTarget
) -> AsyncIterator[CollectorRunner]:
    """A collector on a real Mosquitto and ``store_url`` (each backend in turn)."""
    run = CollectorRunner(mosquitto, store_url)
    yield run
    await run.stop()


def _samples(t0: float) -> list[Sample]:
    """What the three nodes send, in order (interval 5 s, node clocks near ``t0``)."""
    sim = FleetSimulator(7, gpus_per_node=2, seed=8, interval_s=5, epoch=7)

    def at(node: int, ts: float, seq: int, epoch: int | None) -> Sample:
        return msgspec.structs.replace(sim.sample(node, ts, seq), epoch=epoch)

    out = [at(0, t0 + 5 * k, k, 7) for k in range(4)]
    # NTP steps the clock back 2 minutes; the agent goes on numbering.
    out += [at(0, t0 - 120 + 5 * k, 4 + k, 7) for k in range(3)]
    # The same, but the sample just before the step (seq 4) is lost on the way: the
    # watermark's hole makes the spool send it again, after the newer ones.
    out += [at(1, t0 + 5 * k, k, 7) for k in range(4)]
    out += [at(1, t0 - 120 + 5 * k, 5 + k, 7) for k in range(2)]
    out += [at(1, t0 + 20, 4, 7)]
    # A run stamped ahead (epoch 7), then the agent restarts (epoch 8) after NTP set the
    # clock back 200 s.
    out += [at(2, t0 + 5 * k, k, 7) for k in range(4)]
    out += [at(2, t0 - 200 + 5 * k, k, 8) for k in range(2)]
    # Epoch 5 stamped ahead, then stepped back 110 s; a late sample of epoch 4 stamped
    # between is late (older than epoch 5's newest time), not a restart.
    out += [at(3, t0 + 10, 0, 5), at(3, t0 - 100, 1, 5), at(3, t0 - 50, 9, 4)]
    # An agent before epochs: newest by time, a late sample changes nothing.
    out += [at(4, t0 + 5 * k, k, None) for k in (0, 1, 3)]
    out += [at(4, t0 + 10, 2, None)]
    # Epoch 0 to seq 3, epoch 1, then the spool wiped: epoch 0 from seq 0 again, stamped
    # after both runs (a start, though epoch 1 took over from an epoch 0 that reached seq 3).
    out += [at(5, t0 - 60 + 5 * k, k, 0) for k in range(4)]
    out += [at(5, t0 - 40 + 5 * k, k, 1) for k in range(2)]
    out += [at(5, t0 - 20 + 5 * k, k, 0) for k in range(2)]
    # Epoch 7 to seq 5, then a clone of the agent taken at seq 2 (its spool too) sends seq 3
    # and 4 again, stamped after seq 5: the first sender's seq 5 stays the newest.
    out += [at(6, t0 + 5 * k, k, 7) for k in range(6)]
    out += [at(6, t0 + 27 + 5 * k, 3 + k, 7) for k in range(2)]
    return out


async def _publish(broker: MosquittoBroker, samples: Sequence[Sample]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="nodes") as client:
        for s in samples:  # QoS 1 on one connection: the broker keeps their order
            await client.publish(sample_topic(s.node), encode(s), qos=1)


def _query(db: StoreTarget, *args: str) -> Any:
    return collector_json("query", "--db", str(db), *args)


async def test_the_store_names_the_same_newest_sample_as_the_live_view(
    mosquitto: MosquittoBroker, runner: CollectorRunner
) -> None:
    """Clock stepped back, restart behind the last run, spool replay, agent without epochs,
    a cloned agent:
    `collector query`, the GPUs' rows and the store's node states show the live view's
    newest sample of each node."""
    collector = await runner.start()
    t0 = time.time() - 60
    samples = _samples(t0)
    await _publish(mosquitto, samples)
    await wait_until(lambda: count_samples(runner.target) == len(samples), what="all stored")
    # Every batch was valid: none refused and bisected (a fresh collector's first batch
    # remembers its session's filters twice; PostgreSQL refused that as one upsert).
    assert collector.counter_values()["store_bisections"] == 0
    # The store's per-node marks are written once a second: wait for the last round.
    await wait_until(
        lambda: (
            sorted(db_rows(runner.target, "SELECT node, epoch, top FROM watermarks"))
            == sorted(
                [
                    (STEPPED, 7, 6),
                    (REPLAYED, 7, 6),
                    (RESTARTED, 8, 1),
                    (LATE, 5, 1),
                    (WIPED, 0, 1),
                    (CLONED, 7, 5),
                ]
            )
        ),
        what="watermarks written",
    )
    live = {n: collector.live.get(n) for n in NODES}
    newest = {n: st.sample for n, st in live.items() if st is not None and st.sample}
    assert {n: (s.epoch, s.seq) for n, s in newest.items()} == {
        STEPPED: (7, 6),
        REPLAYED: (7, 6),
        RESTARTED: (8, 1),
        LATE: (5, 1),
        OLD_AGENT: (None, 3),
        WIPED: (0, 1),
        CLONED: (7, 5),
    }

    with StoreReader(runner.target) as reader:
        stored = {st.node: st.sample for st in nodes_from_store(reader)}
    assert {n: (s.epoch, s.seq, s.ts) for n, s in stored.items() if s} == {
        n: (s.epoch, s.seq, s.ts) for n, s in newest.items()
    }

    for node, sample in newest.items():
        gpus = _query(runner.target, "--gpus", "--node", node)["gpus"]
        assert {g["ts"] for g in gpus} == {sample.ts}, node
    fleet = _query(runner.target, "--gpus")["gpus"]
    assert {g["node"]: g["ts"] for g in fleet} == {n: s.ts for n, s in newest.items()}
    summary = _query(runner.target)
    figures = ("cpu_pct", "gpu_util_pct", "gpu_power_w")
    rows = {n: sample_row(s, b"", 0) for n, s in newest.items()}
    assert {n["node"]: tuple(n[f] for f in figures) for n in summary["nodes"]} == {
        n: tuple(getattr(r, f) for f in figures) for n, r in rows.items()
    }


@pytest.mark.integration
@pytest.mark.parametrize("url", ["postgres_url", "collated_postgres_url"])
async def test_the_newest_sample_is_found_through_the_samples_index_on_postgresql(
    url: str, request: pytest.FixtureRequest
) -> None:
    """`nodes.node` compares as bytes (``C``, migration 0033), `samples.node` in the
    database's collation (its index too): compared as they are, the index cannot serve the
    join, and the fleet query read every stored sample once per node (3,000 nodes x 20
    samples: over 20 s). With seq scans priced out, the plan must use the index."""
    target = parse_target(request.getfixturevalue(url))
    assert isinstance(target, PgTarget)
    sim = FleetSimulator(2, gpus_per_node=2, seed=8, interval_s=5, epoch=7)
    t0 = time.time() - 60
    samples = [sim.sample(i, t0 + 5 * k, k) for k in range(3) for i in range(2)]
    rows = [sample_row(s, encode(s), s.ts) for s in samples]
    async with Store(target) as store:
        await store.write_batch(rows, [], sim.node_ids)
    sql = f"SELECT n.node, s.ts_ms FROM nodes n {latest_sample('postgresql')}"
    with psycopg.connect(target.url, autocommit=True) as pg:
        pg.execute("SET enable_seqscan = off")
        plan = "\n".join(str(r[0]) for r in pg.execute(f"EXPLAIN {sql}").fetchall())
        newest: dict[str, int] = dict(pg.execute(sql).fetchall())
    assert newest == {n: max(r.ts_ms for r in rows if r.node == n) for n in sim.node_ids}
    assert "Seq Scan on samples" not in plan, plan


async def test_without_watermarks_the_store_names_the_newest_by_time(
    mosquitto: MosquittoBroker, runner: CollectorRunner
) -> None:
    """Watermarks off (``watermark_interval_s = 0``; a share group's members write none
    either): the store's reads go by the node's clock, the live view by ``seq`` within a
    run; they differ only for an agent with epochs whose clock went back (stepped, a
    restart behind the last run, a clone stamping later, a late sample stamped after the
    newest run's), as :func:`collector.store.queries.latest_sample` says and why."""
    runner.settings = runner.settings.model_copy(update={"watermark_interval_s": 0.0})
    collector = await runner.start()
    t0 = time.time() - 60
    samples = _samples(t0)
    await _publish(mosquitto, samples)
    await wait_until(lambda: count_samples(runner.target) == len(samples), what="all stored")
    assert db_rows(runner.target, "SELECT count(*) FROM watermarks") == [(0,)]
    live = {n: st.sample for n in NODES if (st := collector.live.get(n)) and st.sample}
    with StoreReader(runner.target) as reader:
        stored = {st.node: st.sample for st in nodes_from_store(reader) if st.sample}
    by_time = {n: max((s for s in samples if s.node == n), key=lambda s: s.ts) for n in NODES}
    assert {n: (s.epoch, s.seq) for n, s in stored.items()} == {
        n: (s.epoch, s.seq) for n, s in by_time.items()
    }
    differ = {n for n in NODES if (live[n].epoch, live[n].seq) != (stored[n].epoch, stored[n].seq)}
    assert differ == {STEPPED, REPLAYED, RESTARTED, LATE, CLONED}
