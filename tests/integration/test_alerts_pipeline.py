"""Alerts end to end: a hot GPU on the wire -> live view -> rule -> recorded; restarts keep it."""

from __future__ import annotations

import json

import pytest

from collector.counters import value
from collector.localbroker import MosquittoBroker
from tests.helpers import db_rows, wait_until
from tests.integration.conftest import CollectorRunner, HotGpuNode

pytestmark = pytest.mark.integration


def _history(runner: CollectorRunner, rule: str) -> list[tuple[str, str]]:
    return [
        (prev, state)
        for prev, state in db_rows(
            runner.db,
            "SELECT previous, state FROM alert_history WHERE rule = ? ORDER BY id",
            (rule,),
        )
    ]


async def test_a_hot_gpu_fires_then_resolves_and_a_restart_does_not_refire(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner
) -> None:
    """GPU 3 at 95 C: GpuTemperature fires (labels, fingerprint); a restart keeps it firing
    without a second firing change; cooled down, it resolves."""
    collector_runner.settings = collector_runner.settings.model_copy(
        update={
            "expected_interval_s": 1.0,  # how long a restored alert waits for the view
            "alerts": HotGpuNode.prompt(collector_runner.settings.alerts),
        }
    )
    await collector_runner.start()
    hot = HotGpuNode(mosquitto)
    node, publish = hot.node, hot.publish

    await publish(95.0)
    await wait_until(
        lambda: (
            db_rows(
                collector_runner.db, "SELECT state FROM alerts WHERE rule = ?", ("GpuTemperature",)
            )
            == [("firing",)]
        ),
        what="GpuTemperature firing",
    )
    labels, fingerprint = db_rows(
        collector_runner.db, "SELECT labels, fingerprint FROM alerts WHERE rule = 'GpuTemperature'"
    )[0]
    assert json.loads(labels) | {"uuid": "-"} == {
        "alertname": "GpuTemperature",
        "severity": "warning",
        "node": node,
        "gpu": "3",
        "uuid": "-",
    }
    assert len(fingerprint) == 16

    await collector_runner.stop()
    collector = await collector_runner.start()  # an empty view: the alert must not re-fire
    await publish(95.0)
    await wait_until(lambda: value(collector.ingest_metrics.samples) == 1, what="the hot sample")
    seen = value(collector.alert_metrics.evaluations)
    await wait_until(
        lambda: value(collector.alert_metrics.evaluations) >= seen + 2, what="two evaluations"
    )
    assert _history(collector_runner, "GpuTemperature") == [("inactive", "firing")]

    await publish(60.0)
    await wait_until(
        lambda: _history(collector_runner, "GpuTemperature")[-1:] == [("firing", "resolved")],
        what="GpuTemperature resolved",
    )
    assert db_rows(
        collector_runner.db, "SELECT count(*) FROM alerts WHERE rule = 'GpuTemperature'"
    ) == [(0,)]
