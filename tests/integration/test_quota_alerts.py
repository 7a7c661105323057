"""Quota alerts end to end on both bases: simulated nodes over a real Mosquitto -> collector
live view -> governance job -> rules -> alerts in the store, with the quota and the lease
written by the commands while the collector runs."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import aiomqtt
import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.counters import value
from collector.localbroker import MosquittoBroker
from shared.schema import encode
from shared.topics import inventory_topic, sample_topic
from tests.collector.governance.fleet import cli
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import CollectorRunner, scrape_clean, series_values

pytestmark = pytest.mark.integration


async def _cli(*args: str) -> tuple[int, str, str]:
    """A command beside the running collector: in a thread, as it would be in its own
    process (on the collector's loop, its write could wait on the writer that waits on it)."""
    return await asyncio.to_thread(cli, *args)


async def _publish_fleet(broker: MosquittoBroker, sim: FleetSimulator,
                         utils: list[list[float]], stop: asyncio.Event) -> None:  # fmt: skip
    """Node ``i``'s GPUs at ``utils[i]``, a sample of each node every 0.3 s until ``stop``."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="sim") as client:
        for i, node in enumerate(sim.node_ids):
            await client.publish(
                inventory_topic(node), encode(sim.inventory(i, time.time())), qos=1, retain=True
            )
        seq = 0
        while not stop.is_set():
            for i, node in enumerate(sim.node_ids):
                s = sim.sample(i, time.time(), seq)
                want = utils[i]
                gpus = [
                    msgspec.structs.replace(g, util_pct=u)
                    for g, u in zip(s.gpus, want, strict=True)
                ]
                await client.publish(
                    sample_topic(node), encode(msgspec.structs.replace(s, gpus=gpus)), qos=1
                )
            seq += 1
            await asyncio.sleep(0.3)


def _firing(runner: CollectorRunner) -> set[tuple[str, str, str]]:
    out = set()
    for rule, labels in db_rows(
        runner.db, "SELECT rule, labels FROM alerts WHERE state = 'firing'"
    ):
        lab = json.loads(labels)
        if rule.startswith("Quota"):
            out.add((rule, lab["basis"], lab["resource"]))
    return out


async def test_quota_alerts_fire_on_both_bases(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """16 leased GPUs on a nominal 8: QuotaExceeded (allocated); 8 of them busy: QuotaFull
    (measured); 7 busy: no measured alert; the nominal raised to 10 and 9 busy (90 %):
    QuotaHigh (measured). GPU quotas are whole numbers."""
    s = collector_runner.settings
    collector_runner.settings = s.model_copy(
        update={
            "expected_interval_s": 1.0,
            "alerts": s.alerts.model_copy(update={"eval_interval_s": 0.5}),
            "governance": s.governance.model_copy(
                update={"eval_interval_s": 0.5, "quota_for_s": 0.0}
            ),
            "metrics_listen": "127.0.0.1:0",
        }
    )
    collector = await collector_runner.start()
    sim = FleetSimulator(2, gpus_per_node=8, seed=5, interval_s=1)
    utils = [[90.0] * 8, [0.0] * 8]
    stop = asyncio.Event()
    publisher = asyncio.create_task(_publish_fleet(mosquitto, sim, utils, stop))
    try:
        db = str(collector_runner.db)
        await wait_until(
            lambda: value(collector.ingest_metrics.samples) >= 4, what="samples stored"
        )
        today = dt.datetime.now(dt.UTC).date().isoformat()
        assert (await _cli("quota", "set", "a", "--db", db, "--nominal", "8"))[0] == 0
        code, _, err = await _cli("lease", "add", "--db", db, "--tenant", "a", "--nodes",
                           ",".join(sim.node_ids), "--start", today, "--force")  # fmt: skip
        assert (code, err) == (0, "")
        await wait_until(
            lambda: (
                _firing(collector_runner)
                == {
                    ("QuotaExceeded", "allocated", "gpus"),
                    ("QuotaFull", "measured", "gpus"),
                }
            ),
            what="QuotaExceeded (allocated) and QuotaFull (measured)",
        )
        utils[0][7] = 0.0  # 7 of 8 busy: 87.5 % of the nominal, under 90 %
        await wait_until(
            lambda: _firing(collector_runner) == {("QuotaExceeded", "allocated", "gpus")},
            what="measured back under 90 %",
        )
        assert (await _cli("quota", "set", "a", "--db", db, "--nominal", "10"))[0] == 0
        utils[1][:2] = [90.0, 90.0]  # 9 of 10 busy: 90 %
        await wait_until(
            lambda: (
                _firing(collector_runner)
                == {
                    ("QuotaExceeded", "allocated", "gpus"),
                    ("QuotaHigh", "measured", "gpus"),
                }
            ),
            what="QuotaHigh (measured) at 9 busy of a nominal 10",
        )
        code, out, _ = await _cli("quota", "show", "a", "--db", db, "--json")
        rows = {r["basis"]: r for r in json.loads(out)["quotas"]}
        assert (rows["allocated"]["in_use"], rows["measured"]["in_use"]) == (16, 9)

        # The same standings on the collector's /metrics, per tenant, resource and basis.
        series = series_values(await scrape_clean(collector), "capwatch_quota_")
        key = '{{basis="{}",resource="gpus",tenant="a"}}'
        assert series["capwatch_quota_in_use" + key.format("allocated")] == 16
        assert series["capwatch_quota_in_use" + key.format("measured")] == 9
        assert series["capwatch_quota_nominal" + key.format("measured")] == 10
    finally:
        stop.set()
        await publisher


async def test_lease_rules_fire_from_live_data(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """An ended lease whose node still computes: LeaseExpiredInUse on that node; a lease
    whose notice deadline is today: LeaseNoticeDeadline; cancelling it resolves that."""
    s = collector_runner.settings
    collector_runner.settings = s.model_copy(
        update={
            "expected_interval_s": 1.0,
            "alerts": s.alerts.model_copy(update={"eval_interval_s": 0.5}),
            "governance": s.governance.model_copy(
                update={"eval_interval_s": 0.5, "expired_in_use_for_s": 0.0}
            ),
        }
    )
    collector = await collector_runner.start()
    sim = FleetSimulator(2, gpus_per_node=8, seed=6, interval_s=1)
    stop = asyncio.Event()
    publisher = asyncio.create_task(_publish_fleet(mosquitto, sim, [[95.0] * 8, [0.0] * 8], stop))
    try:
        db = str(collector_runner.db)
        await wait_until(
            lambda: value(collector.ingest_metrics.samples) >= 2, what="samples stored"
        )
        today = dt.datetime.now(dt.UTC).date()
        old, new = sim.node_ids
        code, _, err = await _cli("lease", "add", "--db", db, "--tenant", "gone", "--nodes", old,
                           "--start", (today - dt.timedelta(days=40)).isoformat(),
                           "--duration", "30d", "--name", "ended")  # fmt: skip
        assert (code, err) == (0, "")
        code, _, err = await _cli("lease", "add", "--db", db, "--tenant", "here", "--nodes", new,
                           "--start", (today - dt.timedelta(days=10)).isoformat(),
                           "--duration", "100d", "--notice", "90d", "--name", "due")  # fmt: skip
        assert (code, err) == (0, "")

        def firing() -> set[tuple[str, str]]:
            rows = db_rows(collector_runner.db, "SELECT rule, labels FROM alerts WHERE "
                           "state = 'firing' AND rule LIKE 'Lease%'")  # fmt: skip
            return {(rule, json.loads(labels)["lease"]) for rule, labels in rows}

        await wait_until(
            lambda: firing() == {("LeaseExpiredInUse", "ended"), ("LeaseNoticeDeadline", "due")},
            what="LeaseExpiredInUse and LeaseNoticeDeadline",
        )
        assert (await _cli("lease", "cancel", "due", "--db", db))[0] == 0
        await wait_until(
            lambda: firing() == {("LeaseExpiredInUse", "ended")}, what="notice recorded"
        )
    finally:
        stop.set()
        await publisher
