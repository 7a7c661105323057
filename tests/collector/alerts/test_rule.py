"""The alert life cycle: inactive -> pending -> firing -> resolved, as Prometheus runs it."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import cast

import pytest

from collector.alerts.evaluator import AlertState, Evaluator, Transition
from collector.alerts.fingerprint import fingerprint
from collector.alerts.rule import Condition, Instance, Rule
from collector.live import LiveView
from shared.clock import FakeClock


class Switch:
    """A condition the test turns on and off per label set."""

    def __init__(self) -> None:
        self.active: dict[str, str] = {}  # node -> value

    def __call__(self, view: LiveView, now: float) -> Iterable[Instance]:
        for node, value in self.active.items():
            yield Instance({"node": node}, {"value": value})


def _rule(cond: Condition, *, for_s: float = 0.0, keep_s: float = 0.0) -> Rule:
    return Rule(
        name="TestAlert",
        severity="warning",
        summary="{node} is at {value}",
        description="{node} value {value}, {missing}",
        condition=cond,
        for_s=for_s,
        keep_firing_for_s=keep_s,
        labels={"team": "ops"},
    )


def _states(ts: list[Transition]) -> list[tuple[str, str]]:
    return [(t.previous, t.state) for t in ts]


VIEW = LiveView()


def test_pending_then_firing_then_resolved_with_for_and_keep_firing_for() -> None:
    """The condition must hold for ``for``; resolution waits ``keep_firing_for``."""
    clock = FakeClock()
    cond = Switch()
    ev = Evaluator([_rule(cond, for_s=60, keep_s=30)])
    assert ev.evaluate(VIEW, clock.time()) == []

    cond.active["n1"] = "1"
    t0 = clock.time()
    first = ev.evaluate(VIEW, t0)
    assert _states(first) == [("inactive", "pending")]
    assert first[0].active_at == t0
    assert first[0].starts_at is None

    clock.advance(30)
    assert ev.evaluate(VIEW, clock.time()) == []  # still pending
    clock.advance(30)
    fired = ev.evaluate(VIEW, clock.time())
    assert _states(fired) == [("pending", "firing")]
    assert fired[0].starts_at == t0 + 60
    assert fired[0].notify

    cond.active.clear()
    clock.advance(5)
    gone_at = clock.time()
    assert ev.evaluate(VIEW, gone_at) == []  # keep firing
    clock.advance(29)
    assert ev.evaluate(VIEW, clock.time()) == []
    clock.advance(1)
    resolved = ev.evaluate(VIEW, clock.time())
    assert _states(resolved) == [("firing", "resolved")]
    assert resolved[0].ends_at == gone_at + 30
    assert resolved[0].starts_at == t0 + 60
    assert ev.states() == []


def test_a_forgotten_nodes_alert_resolves_at_once_despite_keep_firing_for() -> None:
    """keep_firing_for 300 s holds a gone condition's alert, but not one whose node was
    forgotten (``collector inventory forget``): resolved at the next evaluation."""
    clock = FakeClock()
    cond = Switch()
    ev = Evaluator([_rule(cond, keep_s=300)])
    view = LiveView()
    cond.active.update({"n1": "1", "n2": "1"})
    assert _states(ev.evaluate(view, clock.time())) == [("inactive", "firing")] * 2
    cond.active.clear()
    view.forget("n1")
    clock.advance(1)
    resolved = ev.evaluate(view.snapshot(), clock.time())
    assert [(t.labels["node"], t.state) for t in resolved] == [("n1", "resolved")]
    assert [s.labels["node"] for s in ev.states()] == ["n2"]  # kept firing


def test_pending_that_goes_away_before_for_returns_to_inactive_without_firing() -> None:
    """A blip shorter than ``for`` never fires; it is reported as pending -> inactive."""
    clock = FakeClock()
    cond = Switch()
    ev = Evaluator([_rule(cond, for_s=60, keep_s=300)])
    cond.active["n1"] = "1"
    ev.evaluate(VIEW, clock.time())
    clock.advance(59)
    cond.active.clear()
    changes = ev.evaluate(VIEW, clock.time())
    assert _states(changes) == [("pending", "inactive")]
    assert not changes[0].notify
    cond.active["n1"] = "1"
    clock.advance(1)
    again = ev.evaluate(VIEW, clock.time())
    assert _states(again) == [("inactive", "pending")]  # the `for` clock starts over
    assert again[0].active_at == clock.time()


def test_for_zero_fires_at_once_and_keep_zero_resolves_at_once() -> None:
    """``for`` 0 goes straight to firing; ``keep_firing_for`` 0 resolves on the first miss."""
    clock = FakeClock()
    cond = Switch()
    ev = Evaluator([_rule(cond)])
    cond.active["n1"] = "1"
    assert _states(ev.evaluate(VIEW, clock.time())) == [("inactive", "firing")]
    cond.active.clear()
    clock.advance(5)
    assert _states(ev.evaluate(VIEW, clock.time())) == [("firing", "resolved")]


def test_flapping_condition_is_one_firing_alert_under_keep_firing_for() -> None:
    """On/off every 5 s with keep_firing_for 30 s: one firing, no resolution, until it stops."""
    clock = FakeClock()
    cond = Switch()
    ev = Evaluator([_rule(cond, keep_s=30)])
    changes: list[Transition] = []
    for i in range(40):
        if i % 2 == 0:
            cond.active["n1"] = "1"
        else:
            cond.active.clear()
        changes += ev.evaluate(VIEW, clock.time())
        clock.advance(5)
    assert _states(changes) == [("inactive", "firing")]
    cond.active.clear()
    for _ in range(7):
        changes += ev.evaluate(VIEW, clock.time())
        clock.advance(5)
    assert _states(changes) == [("inactive", "firing"), ("firing", "resolved")]


def test_flapping_without_keep_firing_for_resolves_each_time() -> None:
    """The same flapping with keep_firing_for 0 notifies every change: what the damping is for."""
    clock = FakeClock()
    cond = Switch()
    ev = Evaluator([_rule(cond)])
    changes: list[Transition] = []
    for i in range(4):
        if i % 2 == 0:
            cond.active["n1"] = "1"
        else:
            cond.active.clear()
        changes += ev.evaluate(VIEW, clock.time())
        clock.advance(5)
    assert len(changes) == 4


def test_one_alert_per_label_set_with_alertmanager_fingerprint() -> None:
    """Two nodes are two alerts; a duplicate instance is one; fingerprints cover all labels."""
    clock = FakeClock()
    cond = Switch()
    cond.active.update({"n1": "1", "n2": "2"})

    def doubled(view: LiveView, now: float) -> Iterable[Instance]:
        yield from cond(view, now)
        yield from cond(view, now)

    ev = Evaluator([_rule(doubled)])
    fired = ev.evaluate(VIEW, clock.time())
    assert sorted(t.labels["node"] for t in fired) == ["n1", "n2"]
    n1 = next(t for t in fired if t.labels["node"] == "n1")
    assert dict(n1.labels) == {
        "alertname": "TestAlert",
        "severity": "warning",
        "team": "ops",
        "node": "n1",
    }
    assert n1.fingerprint == fingerprint(n1.labels)
    assert n1.annotations == {"summary": "n1 is at 1", "description": "n1 value 1, <no value>"}
    clock.advance(5)
    assert ev.evaluate(VIEW, clock.time()) == []
    assert len(ev.states()) == 2


def test_a_label_the_rule_sets_itself_is_the_rules_in_the_alert_and_its_identity() -> None:
    """An instance naming a label the rule sets (``team``) gets the rule's value: two instances
    that differ only there are one alert, fingerprinted over the labels it has."""

    def cond(view: LiveView, now: float) -> Iterable[Instance]:
        yield Instance({"node": "n1", "team": "dev"}, {"value": "1"})
        yield Instance({"team": "qa", "node": "n1"}, {"value": "1"})

    ev = Evaluator([_rule(cond)])
    (fired,) = ev.evaluate(VIEW, 1000.0)
    assert dict(fired.labels) == {
        "node": "n1",
        "team": "ops",
        "alertname": "TestAlert",
        "severity": "warning",
    }
    assert fired.fingerprint == fingerprint(fired.labels)
    assert ev.evaluate(VIEW, 1005.0) == []


def test_alert_states_are_not_tracked_by_the_cyclic_garbage_collector() -> None:
    """A mass event makes thousands of alert states at once: untracked, they add nothing for
    the collections during (and after) that evaluation to scan."""
    cond = Switch()
    cond.active = {f"n{i}": "1" for i in range(3)}
    ev = Evaluator([_rule(cond)])
    ev.evaluate(LiveView(), 1000.0)
    assert len(ev.states()) == 3
    assert not any(gc.is_tracked(st) for st in ev.states())


def test_annotations_follow_the_latest_values_while_firing() -> None:
    """A changing value re-renders the annotations without a new transition."""
    clock = FakeClock()
    cond = Switch()
    ev = Evaluator([_rule(cond)])
    cond.active["n1"] = "90"
    ev.evaluate(VIEW, clock.time())
    cond.active["n1"] = "95"
    clock.advance(5)
    assert ev.evaluate(VIEW, clock.time()) == []
    (st,) = ev.states()
    assert st.annotations["summary"] == "n1 is at 95"


class _NoValue(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "<no value>"


@pytest.mark.parametrize("value", ["{x} 7%", 7])
@pytest.mark.parametrize(
    "template",
    [
        "{node} is at {value}",
        "{node} at 100% of {value} (50%s, %(node)s, %%)",
        "{{node}} is {{{node}}}: {value}}}",
        "{node}: {missing}, {value}",
        "{value:>9}|{node:.2}",
        "{node!r} {value!s}",
        "{node}{value}{node}",
        "no fields, 5% of {{it}}",
        "",
    ],
)
def test_annotations_render_as_format_map_does(template: str, value: str | int) -> None:
    """The rule renders its templates from a ``%`` format made once where it can (a mass event
    renders thousands): the text is what ``str.format_map`` gives, ``%`` and doubled braces
    included, a value that is not a string too, a missing key still ``<no value>``, and a
    field with a conversion or a format spec still formatted by ``format_map`` itself."""
    rule = Rule(
        name="T",
        severity="info",
        summary=template,
        description=f"[{template}]",
        condition=Switch(),
    )
    labels = {"node": "n%1", "alertname": "T", "severity": "info"}
    values = cast("dict[str, str]", {"value": value})  # a condition may hand over a number
    expected = template.format_map(_NoValue({**labels, **values}))
    assert rule.annotations(labels, values) == {
        "summary": expected,
        "description": f"[{expected}]",
    }


def _persisted(states: list[AlertState]) -> list[AlertState]:
    """What a store would give back: fresh objects with the same fields."""
    return [
        AlertState(
            rule=s.rule,
            labels=dict(s.labels),
            fingerprint=s.fingerprint,
            state=s.state,
            active_at=s.active_at,
            fired_at=s.fired_at,
            annotations=dict(s.annotations),
            values=dict(s.values),
        )
        for s in states
    ]


def test_restore_continues_firing_without_a_duplicate_transition() -> None:
    """A restarted evaluator neither re-fires nor forgets; it resolves later as usual."""
    clock = FakeClock()
    cond = Switch()
    cond.active["n1"] = "1"
    first = Evaluator([_rule(cond, for_s=10, keep_s=20)])
    first.evaluate(VIEW, clock.time())
    clock.advance(10)
    (fired,) = first.evaluate(VIEW, clock.time())
    assert fired.state == "firing"

    clock.advance(60)  # the collector was down for a minute
    second = Evaluator([_rule(cond, for_s=10, keep_s=20)])
    second.restore(_persisted(first.states()), clock.time())
    assert second.evaluate(VIEW, clock.time()) == []
    (st,) = second.states()
    assert st.fired_at == fired.starts_at

    cond.active.clear()
    clock.advance(5)
    assert second.evaluate(VIEW, clock.time()) == []
    clock.advance(20)
    (resolved,) = second.evaluate(VIEW, clock.time())
    assert (resolved.previous, resolved.state) == ("firing", "resolved")
    assert resolved.fingerprint == fired.fingerprint
    assert resolved.starts_at == fired.starts_at


def test_restore_keeps_a_pending_alert_counting_from_its_first_activity() -> None:
    """A restored pending alert fires when ``for`` has passed since it became active."""
    clock = FakeClock()
    cond = Switch()
    cond.active["n1"] = "1"
    first = Evaluator([_rule(cond, for_s=60)])
    first.evaluate(VIEW, clock.time())
    clock.advance(30)
    second = Evaluator([_rule(cond, for_s=60)])
    second.restore(_persisted(first.states()), clock.time())
    assert second.evaluate(VIEW, clock.time()) == []
    clock.advance(30)
    assert _states(second.evaluate(VIEW, clock.time())) == [("pending", "firing")]


def test_restore_hold_keeps_firing_while_the_view_refills() -> None:
    """With ``hold_s`` a restored alert survives an empty view until the hold ends."""
    clock = FakeClock()
    cond = Switch()
    cond.active["n1"] = "1"
    first = Evaluator([_rule(cond)])
    first.evaluate(VIEW, clock.time())
    cond.active.clear()  # the restarted view does not know n1 yet
    second = Evaluator([_rule(cond)])
    second.restore(_persisted(first.states()), clock.time(), hold_s=15)
    clock.advance(10)
    assert second.evaluate(VIEW, clock.time()) == []
    cond.active["n1"] = "1"  # the first sample arrived: still the same alert
    clock.advance(10)
    assert second.evaluate(VIEW, clock.time()) == []
    cond.active.clear()
    clock.advance(5)
    assert _states(second.evaluate(VIEW, clock.time())) == [("firing", "resolved")]


def test_restored_alert_of_a_removed_rule_resolves() -> None:
    """A firing alert whose rule is gone from the configuration is resolved, not kept forever."""
    clock = FakeClock()
    cond = Switch()
    cond.active["n1"] = "1"
    first = Evaluator([_rule(cond)])
    first.evaluate(VIEW, clock.time())
    second = Evaluator([])
    second.restore(_persisted(first.states()), clock.time())
    assert _states(second.evaluate(VIEW, clock.time())) == [("firing", "resolved")]
    assert second.states() == []


def test_rule_rejects_bad_names_severities_and_labels() -> None:
    """Configuration mistakes fail when the rule is built, naming the field."""
    cond = Switch()
    with pytest.raises(ValueError, match="alertname"):
        Rule("bad name", "warning", "", "", cond)
    with pytest.raises(ValueError, match="severity"):
        Rule("Ok", "page", "", "", cond)
    with pytest.raises(ValueError, match="label name"):
        Rule("Ok", "info", "", "", cond, labels={"severity": "x"})
    with pytest.raises(ValueError, match=">= 0"):
        Rule("Ok", "info", "", "", cond, for_s=-1)
    with pytest.raises(ValueError, match="two rules"):
        Evaluator([Rule("Ok", "info", "", "", cond), Rule("Ok", "info", "", "", cond)])


@pytest.mark.parametrize("name", ["node", "_x", "gpu0", "0gpu", "a-b", "a.b", "a\n", "é", ""])
def test_every_label_name_check_takes_the_same_names(name: str) -> None:
    """A rule's name, its static labels, a route's matcher and an inhibit rule's ``equal``
    accept exactly the label names Prometheus accepts, one rule for all four."""
    from collector.alerts.route import make_matcher  # noqa: PLC0415
    from collector.settings import InhibitRuleSettings  # noqa: PLC0415

    def nothing(view: LiveView, now: float) -> Iterable[Instance]:
        return ()

    checks: dict[str, Callable[[], object]] = {
        "rule": lambda: Rule(name, "warning", "s", "d", nothing),
        "label": lambda: Rule("R", "warning", "s", "d", nothing, labels={name: "v"}),
        "matcher": lambda: make_matcher(name, "=", "v"),
        "equal": lambda: InhibitRuleSettings(
            source_matchers=["a=b"], target_matchers=["c=d"], equal=[name]
        ),
    }
    accepted = {}
    for what, check in checks.items():
        try:
            check()
            accepted[what] = True
        except ValueError:
            accepted[what] = False
    expected = name in ("node", "_x", "gpu0")
    assert accepted == dict.fromkeys(checks, expected)
