"""The alert job's half on the writer: what a mass event logs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from structlog.testing import capture_logs

from collector.alerts.evaluator import Evaluator
from collector.alerts.job import AlertJob
from collector.alerts.rule import Instance, Rule
from collector.evaluate import run_once
from collector.live import LiveView
from collector.store.db import Store
from shared.clock import FakeClock
from tests.helpers import db_rows


def _every_node(view: LiveView, now: float) -> Iterable[Instance]:
    for i in range(25):
        yield Instance({"node": f"n{i:02d}"})


async def test_a_mass_event_logs_twenty_alerts_and_counts_the_rest_by_rule(
    tmp_path: Path,
) -> None:
    """25 alerts firing at once: a line for each of the first 20, then one line counting
    the other 5 by rule and state; the store's history has all 25."""
    rule = Rule("Everything", "warning", "{node} is down", "", _every_node)
    job = AlertJob(Evaluator([rule]), FakeClock())
    async with Store(tmp_path / "c.db") as store:
        with capture_logs() as logs:
            await run_once(job, store, LiveView())
    fired = [e["labels"]["node"] for e in logs if e["event"] == "alert_firing"]
    assert fired == [f"n{i:02d}" for i in range(20)]
    rest = [e for e in logs if e["event"] == "alert_changes_not_logged"]
    assert [(e["alerts"], e["by_rule"]) for e in rest] == [(5, {"Everything firing": 5})]
    history = db_rows(tmp_path / "c.db", "SELECT count(*) FROM alert_history")
    assert history == [(25,)]
