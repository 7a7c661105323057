"""Webhooks end to end: a hot GPU on the wire -> rule -> outbox -> a real HTTP receiver."""

from __future__ import annotations

import json

import pytest
from pydantic import HttpUrl

from collector.localbroker import MosquittoBroker
from collector.settings import ReceiverSettings, RouteSettings
from tests.collector.alerts.receiver import Receiver
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import CollectorRunner, HotGpuNode

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
                "alerts": HotGpuNode.prompt(s.alerts),
                "receivers": [ReceiverSettings(name="ops", url=HttpUrl(rx.url), timeout_s=5)],
                # No waiting: the first notification and the resolution as soon as evaluated.
                "routes": [RouteSettings(group_wait="0s", group_interval="0s")],
            }
        )
        await collector_runner.start()
        hot = HotGpuNode(mosquitto)
        node, publish = hot.node, hot.publish

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
