"""What one node can make the evaluator hold: at most ``max_per_node`` alerts per rule, the
rest counted and logged; pending alerts that go away counted per rule."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from collector.alerts.evaluator import Evaluator, EvaluatorMetrics
from collector.alerts.rule import Instance, Rule
from collector.live import LiveView
from collector.service import Collector
from collector.settings import CollectorSettings

VIEW = LiveView()
T0 = 1_800_000_000.0


class _Things:
    """A condition yielding, per node, the things the test names (``None``: no node label)."""

    def __init__(self) -> None:
        self.on: Sequence[tuple[str | None, str]] = []

    def __call__(self, view: LiveView, now: float) -> Iterable[Instance]:
        for node, thing in self.on:
            yield Instance({"thing": thing} if node is None else {"node": node, "thing": thing})


def _evaluator(
    cond: _Things, *, limit: int = 3, for_s: float = 0.0
) -> tuple[Evaluator, CollectorRegistry]:
    registry = CollectorRegistry()
    rule = Rule("Thing", "warning", "{thing}", "", cond, for_s=for_s, max_per_node=limit)
    return Evaluator([rule], metrics=EvaluatorMetrics(registry)), registry


def _held(ev: Evaluator) -> list[tuple[str | None, str, str]]:
    return sorted(
        ((s.labels.get("node"), s.labels["thing"], s.state) for s in ev.states()),
        key=lambda t: (t[0] or "", t[1]),
    )


def _counted(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(
        f"capwatch_collector_alert_{name}_total", {"alertname": "Thing"}
    )


def test_a_rule_holds_at_most_max_per_node_alerts_of_a_node_and_counts_the_rest() -> None:
    """Five things on node a (limit 3): the first three; node b's two and the two without a
    node label are all held; two dropped, counted and named in one log line."""
    cond = _Things()
    nodes: list[tuple[str | None, str]] = [("a", f"a{i}") for i in range(5)]
    cond.on = [*nodes, ("b", "b0"), ("b", "b1"), (None, "site0"), (None, "site1")]
    ev, registry = _evaluator(cond)
    with capture_logs() as logs:
        fired = ev.evaluate(VIEW, T0)
    assert len(fired) == 7
    assert _held(ev) == [
        (None, "site0", "firing"),
        (None, "site1", "firing"),
        ("a", "a0", "firing"),
        ("a", "a1", "firing"),
        ("a", "a2", "firing"),
        ("b", "b0", "firing"),
        ("b", "b1", "firing"),
    ]
    assert _counted(registry, "instances_dropped") == 2
    lines = [e for e in logs if e["event"] == "alert_instances_dropped"]
    assert [(e["alertname"], e["max_per_node"], e["dropped"], e["nodes"]) for e in lines] == [
        ("Thing", 3, 2, {"a": 2})
    ]


def test_held_alerts_keep_their_place_and_a_freed_one_is_taken_at_the_next_evaluation() -> None:
    """Node a holds a0-a2 firing; then x comes first and a2 goes: x waits (a0, a1 are not
    displaced), a2 resolves, and the next evaluation creates x."""
    cond = _Things()
    cond.on = [("a", "a0"), ("a", "a1"), ("a", "a2")]
    ev, registry = _evaluator(cond)
    ev.evaluate(VIEW, T0)
    cond.on = [("a", "x"), ("a", "a0"), ("a", "a1")]
    changes = ev.evaluate(VIEW, T0 + 1)
    assert [(t.labels["thing"], t.state) for t in changes] == [("a2", "resolved")]
    assert _counted(registry, "instances_dropped") == 1
    changes = ev.evaluate(VIEW, T0 + 2)
    assert [(t.labels["thing"], t.state) for t in changes] == [("x", "firing")]
    assert [t for _, t, _ in _held(ev)] == ["a0", "a1", "x"]


def test_a_node_turning_its_things_over_every_evaluation_stays_within_the_limit() -> None:
    """Ten new things on node a at every evaluation (limit 3, ``for`` 60 s): never more than
    three held; those that went away pending are counted as cleared, not fired."""
    cond = _Things()
    ev, registry = _evaluator(cond, for_s=60)
    made = 0
    for k in range(20):
        cond.on = [("a", f"{k}-{i}") for i in range(10)]
        changes = ev.evaluate(VIEW, T0 + k)
        made += sum(t.state == "pending" for t in changes)
        assert len(ev.states()) <= 3
        assert all(t.state in ("pending", "inactive") for t in changes)
    assert _counted(registry, "instances_dropped") == 200 - made
    assert _counted(registry, "pending_cleared") == made - len(ev.states()) > 0


def test_restored_alerts_count_against_the_limit() -> None:
    """Three pending alerts of node a restored after a restart (limit 3): a fourth thing
    is dropped until one of them goes."""
    cond = _Things()
    cond.on = [("a", "a0"), ("a", "a1"), ("a", "a2")]
    first, _ = _evaluator(cond, for_s=60)
    first.evaluate(VIEW, T0)
    second, registry = _evaluator(cond, for_s=60)
    second.restore(first.states(), T0 + 10)
    cond.on = [("a", "new"), ("a", "a0"), ("a", "a1"), ("a", "a2")]
    assert second.evaluate(VIEW, T0 + 20) == []
    assert _counted(registry, "instances_dropped") == 1
    cond.on = [("a", "new"), ("a", "a0"), ("a", "a1")]
    second.evaluate(VIEW, T0 + 30)  # a2 goes (pending: cleared)
    changes = second.evaluate(VIEW, T0 + 40)
    assert [(t.labels["thing"], t.state) for t in changes] == [("new", "pending")]
    assert _counted(registry, "pending_cleared") == 1


def test_restoring_in_place_of_held_alerts_counts_each_once() -> None:
    """Node a's three alerts (limit 3) restored into the evaluator that holds them (the
    alert job's take-back after a refused write): once a2 goes, a new thing is taken at
    the next evaluation (counted twice, 6 held, it was dropped for good)."""
    cond = _Things()
    cond.on = [("a", "a0"), ("a", "a1"), ("a", "a2")]
    ev, registry = _evaluator(cond)
    ev.evaluate(VIEW, T0)
    ev.restore(ev.states(), T0 + 1)
    cond.on = [("a", "a0"), ("a", "a1")]
    ev.evaluate(VIEW, T0 + 2)  # a2 resolves
    cond.on = [("a", "a0"), ("a", "a1"), ("a", "x")]
    changes = ev.evaluate(VIEW, T0 + 3)
    assert [(t.labels["thing"], t.state) for t in changes] == [("x", "firing")]
    assert _counted(registry, "instances_dropped") is None


def test_the_dropped_line_is_logged_at_most_once_a_minute_with_what_it_missed() -> None:
    """Drops at every evaluation: a line at the first, none for the next 59 s, then one
    line with every drop since the last (across nodes)."""
    cond = _Things()
    cond.on = [("a", f"a{i}") for i in range(4)] + [("b", f"b{i}") for i in range(5)]
    ev, _ = _evaluator(cond)
    with capture_logs() as logs:
        for s in range(0, 61, 5):  # 13 evaluations, each dropping a1's 1 and b's 2
            ev.evaluate(VIEW, T0 + s)
    lines = [(e["dropped"], e["nodes"]) for e in logs if e["event"] == "alert_instances_dropped"]
    assert lines == [(3, {"b": 2, "a": 1}), (36, {"b": 24, "a": 12})]


def test_max_per_node_must_be_positive() -> None:
    """A rule cannot be built to hold no alert per node."""
    with pytest.raises(ValueError, match="max_per_node must be >= 1"):
        Rule("Thing", "warning", "", "", _Things(), max_per_node=0)


def test_the_collector_serves_the_evaluator_counters(tmp_path: Path) -> None:
    """The collector's evaluator counts on its one registry (``/metrics``) and in the
    counters table, under alert_pending_cleared and alert_instances_dropped."""
    collector = Collector(CollectorSettings(db_path=tmp_path / "c.db"))
    collector.evaluator_metrics.instances_dropped.labels("JobGpuIdle").inc(5)
    collector.evaluator_metrics.pending_cleared.labels("GpuTemperature").inc(2)
    assert collector.evaluator.metrics is collector.evaluator_metrics
    get = collector.registry.get_sample_value
    dropped = get("capwatch_collector_alert_instances_dropped_total", {"alertname": "JobGpuIdle"})
    cleared = get("capwatch_collector_alert_pending_cleared_total", {"alertname": "GpuTemperature"})
    assert (dropped, cleared) == (5, 2)
    table = collector.counter_values()
    assert (table["alert_instances_dropped"], table["alert_pending_cleared"]) == (5, 2)
