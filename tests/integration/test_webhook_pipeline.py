"""Webhooks end to end: a hot GPU on the wire -> rule -> outbox -> a real HTTP receiver."""

from __future__ import annotations

import json
import time

import aiomqtt
import pytest
from pydantic import HttpUrl

from agent.simulate import FleetSimulator
from collector.localbroker import MosquittoBroker
from collector.settings import ReceiverSettings
from shared.topics import sample_topic
from tests.collector.alerts.receiver import Receiver
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import CollectorRunner
from tests.integration.test_alerts_pipeline import _with_gpu_temp

pytestmark = pytest.mark.integration


async def test_a_hot_gpu_reaches_the_receiver_firing_then_resolved(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """GPU 3 at 95 C through Mosquitto: the receiver gets GpuTemperature firing, then, once
    the GPU is back at 60 C, resolved; both outbox rows end delivered."""
    with Receiver().serve() as rx:
        s = collector_runner.settings
        collector_runner.settings = s.model_copy(
            update={
                "alerts": s.alerts.model_copy(
                    update={
                        "eval_interval_s": 0.5,
                        "gpu_temp_for_s": 0.0,
                        "gpu_temp_keep_firing_for_s": 0.0,
                    }
                ),
                "receivers": [ReceiverSettings(name="ops", url=HttpUrl(rx.url), timeout_s=5)],
            }
        )
        await collector_runner.start()
        sim = FleetSimulator(1, gpus_per_node=8, seed=11, interval_s=1)
        node = sim.node_ids[0]
        seq = 0

        async def publish(temp_c: float) -> None:
            nonlocal seq
            sample = sim.sample(0, time.time(), seq)
            seq += 1
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="hot") as c:
                await c.publish(sample_topic(node), _with_gpu_temp(sample, 3, temp_c), qos=1)

        def statuses() -> list[str]:
            return [json.loads(r.body)["status"] for r in rx.received()]

        await publish(95.0)
        await wait_until(lambda: statuses() == ["firing"], what="the firing notification")
        await publish(60.0)
        await wait_until(lambda: statuses() == ["firing", "resolved"], what="resolved")
        await wait_until(
            lambda: (
                db_rows(collector_runner.db, "SELECT state FROM outbox ORDER BY id")
                == [("delivered",), ("delivered",)]
            ),
            what="both recorded delivered",
        )
        await collector_runner.stop()
    firing = json.loads(rx.received()[0].body)
    (alert,) = firing["alerts"]
    assert (alert["labels"]["alertname"], alert["labels"]["node"], alert["labels"]["gpu"]) == (
        "GpuTemperature",
        node,
        "3",
    )
    assert firing["receiver"] == "ops"
    assert (
        alert["fingerprint"]
        == db_rows(collector_runner.db, "SELECT DISTINCT fingerprint FROM outbox")[0][0]
    )
