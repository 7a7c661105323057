"""A site's Alertmanager as receiver: hot GPU on the wire -> rule -> real Alertmanager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import HttpUrl

from collector.localbroker import MosquittoBroker
from collector.settings import AlertmanagerSettings
from tests.collector.alerts.alertmanager import am_alerts, running_alertmanager
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import CollectorRunner, HotGpuNode

pytestmark = pytest.mark.integration


async def test_a_hot_gpu_shows_in_alertmanager_with_the_same_fingerprint(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner, tmp_path: Path
) -> None:
    """GPU 3 at 95 C: Alertmanager holds GpuTemperature for that node and GPU, with the
    fingerprint the collector stored; back at 60 C, Alertmanager lets it go."""
    with running_alertmanager(tmp_path) as am:
        s = collector_runner.settings
        collector_runner.settings = s.model_copy(
            update={
                "alerts": HotGpuNode.prompt(s.alerts),
                "alertmanagers": [AlertmanagerSettings(name="site", url=HttpUrl(am))],
            }
        )
        await collector_runner.start()
        hot = HotGpuNode(mosquitto)
        await hot.publish(95.0)

        def hot_alerts() -> list[dict[str, Any]]:
            return [a for a in am_alerts(am) if a["labels"]["alertname"] == "GpuTemperature"]

        await wait_until(lambda: len(hot_alerts()) == 1, what="GpuTemperature in Alertmanager")
        (held,) = hot_alerts()
        stored = db_rows(
            collector_runner.db, "SELECT fingerprint FROM alerts WHERE rule = 'GpuTemperature'"
        )
        assert stored == [(held["fingerprint"],)]
        labels = held["labels"]
        assert (labels["node"], labels["gpu"], labels["severity"]) == (hot.node, "3", "warning")

        await hot.publish(60.0)
        await wait_until(lambda: hot_alerts() == [], what="the resolution in Alertmanager")
        await collector_runner.stop()
