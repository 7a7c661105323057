"""The capacity alert rules through the alert engine's evaluator."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

import pytest

from agent.simulate import FleetSimulator
from collector.alerts.evaluator import Evaluator
from collector.capacity.compute import compute_picture
from collector.capacity.job import CapacityState
from collector.capacity.picture import Picture
from collector.capacity.rules import capacity_rules
from collector.capacity.settings import CapacitySettings
from collector.live import LiveView
from tests.collector.capacity.helpers import filled_view, site_plan

NOW = 1_790_000_000.0


def _picture() -> Picture:
    view, _ = filled_view(FleetSimulator(20, seed=1), NOW)
    return compute_picture(site_plan(), view.nodes(), NOW)


def _firing(ev: Evaluator, now: float) -> dict[str, dict[str, str]]:
    ev.evaluate(LiveView(), now)
    return {s.rule: s.labels for s in ev.states() if s.state == "firing"}


def _evaluator(
    state: CapacityState,
    *,
    rising_w_per_min: float = 0.0,
    rising_window_s: float = 300.0,
    interval_s: float = 30.0,
) -> Evaluator:
    settings = CapacitySettings(
        for_s=0.0,
        keep_firing_for_s=0.0,
        rising_w_per_min=rising_w_per_min,
        rising_window_s=rising_window_s,
        interval_s=interval_s,
    )
    return Evaluator(capacity_rules(state, settings))


def test_site_draw_above_90_percent_warns_and_above_98_is_critical() -> None:
    """Draw at 93 % fires SitePowerHigh only; at 99 % SitePowerCritical only."""
    state = CapacityState()
    ev = _evaluator(state)
    base = _picture()
    state.update(replace(base, it_w=0.5 * base.cap_w))
    assert _firing(ev, NOW) == {}
    state.update(replace(base, at=NOW + 1, it_w=0.93 * base.cap_w))
    assert "SitePowerHigh" in _firing(ev, NOW + 1)
    state.update(replace(base, at=NOW + 2, it_w=0.99 * base.cap_w))
    firing = _firing(ev, NOW + 2)
    assert "SitePowerCritical" in firing
    assert "SitePowerHigh" not in firing
    assert firing["SitePowerCritical"]["severity"] == "critical"


def test_worst_case_above_the_cap_is_info() -> None:
    """Nameplate sum above the cap fires SiteWorstCaseOverCap with severity info."""
    state = CapacityState()
    ev = _evaluator(state)
    base = _picture()
    state.update(replace(base, worst_it_w=base.cap_w * 1.2))
    firing = _firing(ev, NOW)
    assert firing["SiteWorstCaseOverCap"]["severity"] == "info"


def test_draw_rising_faster_than_the_slope_fires() -> None:
    """Draw climbing 100 kW a minute with a 50 kW/min limit fires; a flat draw does not."""
    state = CapacityState()
    ev = _evaluator(state, rising_w_per_min=50_000.0, rising_window_s=300.0)
    base = _picture()
    for k in range(5):
        state.update(replace(base, at=NOW + 30 * k, it_w=1e6))
    assert "SitePowerRising" not in _firing(ev, NOW + 120)
    for k in range(5, 10):
        state.update(replace(base, at=NOW + 30 * k, it_w=1e6 + (k - 4) * 50_000.0))
    assert "SitePowerRising" in _firing(ev, NOW + 270)


def test_a_picture_too_old_raises_nothing() -> None:
    """When the capacity job stopped, its last picture does not keep alerts alive: after
    5 minutes, or three capacity intervals when those are longer."""
    for interval_s, max_age_s in ((30.0, 300.0), (200.0, 600.0)):
        state = CapacityState()
        ev = _evaluator(state, interval_s=interval_s)
        base = _picture()
        state.update(replace(base, it_w=0.99 * base.cap_w))
        assert "SitePowerCritical" in _firing(ev, NOW)
        assert "SitePowerCritical" in _firing(ev, NOW + max_age_s)
        assert _firing(ev, NOW + max_age_s + 1) == {}


def test_rule_names() -> None:
    """Five capacity rules, in this order (the names ``capacity.disabled`` takes)."""
    names = [r.name for r in capacity_rules(CapacityState())]
    assert names == [
        "SitePowerHigh",
        "SitePowerCritical",
        "RackPowerOverLimit",
        "SiteWorstCaseOverCap",
        "SitePowerRising",
    ]


def test_the_history_a_rule_reads_is_never_changed_under_it() -> None:
    """The capacity cycle (its own evaluator lane, on the loop) records a picture while the
    alert rules may be reading the draw history in their worker thread: an update makes a
    new history, so the one a rule is walking stays as it was (a deque appended to mid-walk
    raised 'deque mutated during iteration'); only the last 720 points are kept."""
    state = CapacityState()
    base = _picture()
    state.update(replace(base, at=NOW, it_w=1e6))
    walking = state.latest.history
    state.update(replace(base, at=NOW + 30, it_w=2e6))
    assert walking == ((NOW, 1e6),)
    assert state.latest.history == ((NOW, 1e6), (NOW + 30, 2e6))
    state.restore(((NOW + 60 + k, 3e6) for k in range(800)), None)
    assert len(state.latest.history) == 720
    assert state.latest.history[-1] == (NOW + 60 + 799, 3e6)
    assert state.latest.picture is not None
    assert state.latest.picture.at == NOW + 30


def _replaced_at_the_rules_first_call(
    state: CapacityState, new: Picture
) -> Callable[[FrameType, str, object], None]:
    """A profiler that publishes ``new`` in ``state`` when a capacity rule first calls a
    function: the capacity lane's update landing just after the rule read the state (the
    rules run in the alert lane's worker thread, the update on the loop: any bytecode
    boundary can come between)."""
    rules_file = capacity_rules.__code__.co_filename

    def profile(frame: FrameType, event: str, arg: object) -> None:
        caller = frame.f_back
        if event == "call" and caller is not None and caller.f_code.co_filename == rules_file:
            sys.setprofile(None)
            state.update(new)

    return profile


@pytest.mark.parametrize("rule", ["SitePowerHigh", "SiteWorstCaseOverCap"])
def test_a_rule_judges_one_picture_even_when_a_new_one_lands_mid_rule(rule: str) -> None:
    """The picture an hour old (what the store held at a take-over, or a stuck capacity
    cycle's last) says 95 % of the cap (worst case 120 %); a fresh one, 50 % (worst case
    90 %), replaces it while a rule runs, between its reading the picture and its judging
    the picture's age. Neither is both fresh and over: nothing fires. The rule read the
    old picture's draw and the new one's age (a stress run hit it once in ~448,000
    evaluations) and fired on the hour-old draw."""
    base = _picture()
    old = replace(base, at=NOW - 3600, it_w=0.95 * base.cap_w, worst_it_w=1.2 * base.cap_w)
    new = replace(base, at=NOW, it_w=0.5 * base.cap_w, worst_it_w=0.9 * base.cap_w)
    state = CapacityState()
    state.update(old)
    others = [r.name for r in capacity_rules(state) if r.name != rule]
    settings = CapacitySettings(for_s=0.0, keep_firing_for_s=0.0, disabled=others)
    ev = Evaluator(capacity_rules(state, settings))
    sys.setprofile(_replaced_at_the_rules_first_call(state, new))
    try:
        firing = _firing(ev, NOW)
    finally:
        sys.setprofile(None)
    assert state.latest.picture is new  # it landed during the evaluation
    assert firing == {}
    assert _firing(ev, NOW) == {}  # the new picture alone: under the thresholds
