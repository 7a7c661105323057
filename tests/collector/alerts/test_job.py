"""The alert job's half on the writer: what a mass event logs."""

from __future__ import annotations

import json
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


_ODD = ('é "q" \\ \n \t \x01 \x7f \u2028 😀 {"a": 1}, ', "ünï", "")
"""Values the JSON of a change must write as ``json.dumps`` does (quotes, escapes, control
characters, non-ASCII kept as is, separators in the text)."""


def _odd_nodes(view: LiveView, now: float) -> Iterable[Instance]:
    for i, value in enumerate(_ODD):
        yield Instance({"node": f"n{i}", "zz": value, "a": value}, {"v": value})
    # A lone surrogate: not in labels (no fingerprint hashes it), but a value may hold one.
    yield Instance({"node": "n9"}, {"v": "\ud800"})


async def test_a_change_holds_its_labels_and_annotations_as_json_dumps_writes_them(
    tmp_path: Path,
) -> None:
    """The store's text of an alert's labels and annotations is ``json.dumps`` with sorted
    keys and ``ensure_ascii=False``, byte for byte (rows written before, and ``collector
    alerts``, read it so), whatever the values hold."""
    rule = Rule("Odd", "warning", "{node} {v}", "{zz}", _odd_nodes)
    job = AlertJob(Evaluator([rule]), FakeClock())
    async with Store(tmp_path / "c.db") as store:
        record = await job(store, LiveView().snapshot())
    assert len(record.changes) == len(_ODD) + 1
    for change, t in zip(record.changes, record.transitions, strict=True):
        assert change.labels == json.dumps(dict(t.labels), sort_keys=True, ensure_ascii=False)
        want = json.dumps(dict(t.annotations), sort_keys=True, ensure_ascii=False)
        assert change.annotations == want
