"""The quotas' measured GPU-hours read the usage ledger: a collector restarted after an
outage counts the samples stamped while it was down (a real Mosquitto keeps them in the
collector's session), which its in-memory integral never saw."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import aiomqtt
import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.localbroker import MosquittoBroker
from shared.schema import encode
from shared.topics import inventory_topic, sample_topic
from tests.collector.governance.fleet import cli
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import CollectorRunner

pytestmark = pytest.mark.integration

UTIL = 60.0


async def _publish(broker: MosquittoBroker, sim: FleetSimulator, seconds: float) -> float:
    """Node 0's 8 GPUs at UTIL for ``seconds``, a sample a second stamped now (QoS 1);
    return the utilisation-weighted GPU-hours published."""
    hours = 0.0
    async with aiomqtt.Client(broker.host, broker.port, identifier="sim") as client:
        node = sim.node_ids[0]
        await client.publish(
            inventory_topic(node), encode(sim.inventory(0, time.time())), qos=1, retain=True
        )
        end = time.monotonic() + seconds
        seq = int(time.time())
        while time.monotonic() < end:
            s = sim.sample(0, time.time(), seq)
            gpus = [msgspec.structs.replace(g, util_pct=UTIL) for g in s.gpus]
            await client.publish(
                sample_topic(node), encode(msgspec.structs.replace(s, gpus=gpus)), qos=1
            )
            hours += len(gpus) * UTIL / 100.0 * s.interval_s / 3600.0
            seq += 1
            await asyncio.sleep(1.0)
    return hours


def _measured(runner: CollectorRunner) -> float:
    assert runner.collector is not None
    return runner.collector.governance.view.measured.of("gpu_hours").get("a", 0.0)


async def test_measured_gpu_hours_survive_a_restart_and_an_outage(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """GPU-hours done before a restart, while the collector was down and after it are all
    in the quota's measured basis once the ledger has run: the ledger's hours, exactly."""
    s = collector_runner.settings
    collector_runner.settings = s.model_copy(
        update={
            "expected_interval_s": 1.0,
            "alerts": s.alerts.model_copy(update={"eval_interval_s": 0.5}),
            "governance": s.governance.model_copy(update={"eval_interval_s": 0.5}),
            "rollups": s.rollups.model_copy(
                update={"fold_interval_s": 0.5, "ledger_interval_s": 1.0}
            ),
        }
    )
    sim = FleetSimulator(1, gpus_per_node=8, seed=9, interval_s=1)
    db = str(collector_runner.db)
    await collector_runner.start()
    done = await _publish(mosquitto, sim, 1.0)  # the node becomes known
    await wait_until(
        lambda: bool(db_rows(collector_runner.db, "SELECT 1 FROM samples")), what="a sample"
    )
    today = dt.datetime.now(dt.UTC).date().isoformat()
    code, _, err = await asyncio.to_thread(
        cli, "quota", "set", "a", "--db", db, "--resource", "gpu_hours", "--nominal", "1000"
    )
    assert (code, err) == (0, "")
    code, _, err = await asyncio.to_thread(
        cli, "lease", "add", "--db", db, "--tenant", "a", "--nodes", sim.node_ids[0],
        "--start", today, "--force",
    )  # fmt: skip
    assert (code, err) == (0, "")
    done += await _publish(mosquitto, sim, 3.0)
    await wait_until(lambda: _measured(collector_runner) > 0, what="measured GPU-hours")

    await collector_runner.stop()
    done += await _publish(mosquitto, sim, 4.0)  # the broker keeps them for the collector
    await collector_runner.start()
    done += await _publish(mosquitto, sim, 2.0)

    def ledger_hours() -> float:
        rows = db_rows(collector_runner.db, "SELECT sum(used_gpu_h) FROM usage_ledger")
        return float(rows[0][0] or 0.0)

    # Every sample folded and in the ledger, the node stale (nothing left to integrate)
    # and the ledger run since: the measured basis is the ledger's, which is every sample's.
    await wait_until(
        lambda: (
            abs(ledger_hours() - done) < 1e-9 and abs(_measured(collector_runner) - done) < 1e-9
        ),
        timeout_s=30,
        what=f"measured GPU-hours = the {done:.6f} published",
    )
