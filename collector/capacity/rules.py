"""The capacity alert rules: site draw near the cap, racks over their limit, the worst case,
draw rising fast. Registered with the built-in rules only when a site plan is configured.

They read the :class:`~collector.capacity.job.CapacityState` the capacity job refreshes
every cycle (not the live view: the picture is the solver's answer on it), each rule one
reading of it (:func:`_fresh`: a picture and the draw history of one generation). Labels:
``alertname``, ``severity``, ``scope`` (``site`` or ``rack``) and ``rack`` for rack alerts.
The draw is measured IT draw (the picture's basis: live power, stale nodes at their
nameplate), which the descriptions say.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import TYPE_CHECKING

from collector.alerts.names import CAPACITY
from collector.alerts.rule import Condition, Instance, Rule, enabled_rules
from collector.capacity.settings import CapacitySettings

if TYPE_CHECKING:
    from collector.capacity.job import CapacityState
    from collector.capacity.picture import Picture
    from collector.live import LiveView

__all__ = ["capacity_rules"]


def _w(watts: float) -> str:
    return f"{watts / 1e3:,.1f} kW"


def _fresh(
    state: CapacityState, now: float, s: CapacitySettings
) -> tuple[Picture, tuple[tuple[float, float], ...]] | None:
    """The picture and draw history of the state's latest reading, read once, if the
    picture is fresh at ``now`` (else ``None``): a rule judges that reading alone, never a
    picture by a newer one's age (see :class:`~collector.capacity.job.CapacityState`)."""
    r = state.latest
    p = r.picture
    return None if p is None or now - p.at > s.max_age_s else (p, r.history)


def _site_draw(
    state: CapacityState, s: CapacitySettings, low: float, high: float | None
) -> Condition:
    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        fresh = _fresh(state, now, s)
        if fresh is None or fresh[0].cap_w <= 0:
            return
        p, _ = fresh
        pct = p.it_w / p.cap_w * 100
        if pct > low and (high is None or pct <= high):
            yield Instance(
                {"scope": "site"},
                {
                    "pct": f"{pct:.1f}",
                    "it": _w(p.it_w),
                    "cap": _w(p.cap_w),
                    "stale": str(p.stale_nodes),
                },
            )

    return condition


def capacity_rules(state: CapacityState, settings: CapacitySettings | None = None) -> list[Rule]:
    """The capacity rules over ``state``, configured by the ``[capacity]`` settings (the
    defaults when ``None``), less those it disables. ``state`` is read only when a rule is
    evaluated."""
    s = settings or CapacitySettings()

    def racks(view: LiveView, now: float) -> Iterator[Instance]:
        fresh = _fresh(state, now, s)
        if fresh is None:
            return
        for r in fresh[0].racks:
            if r.over and r.limit_w is not None:
                yield Instance(
                    {"scope": "rack", "rack": r.rack},
                    {"draw": _w(r.draw_w), "limit": _w(r.limit_w), "nodes": str(r.nodes)},
                )

    def worst(view: LiveView, now: float) -> Iterator[Instance]:
        fresh = _fresh(state, now, s)
        if fresh is None or fresh[0].worst_it_w <= fresh[0].cap_w:
            return
        p, _ = fresh
        yield Instance(
            {"scope": "site"},
            {"worst": _w(p.worst_it_w), "cap": _w(p.cap_w), "it": _w(p.it_w)},
        )

    def rising(view: LiveView, now: float) -> Iterator[Instance]:
        fresh = _fresh(state, now, s)
        if fresh is None:
            return
        p, history = fresh
        points = [(t, w) for t, w in history if t >= now - s.rising_window_s]
        if len(points) < 3 or points[-1][0] - points[0][0] <= 0:
            return
        slope_w_per_s = statistics.linear_regression(
            [t for t, _ in points], [w for _, w in points]
        ).slope
        per_min = slope_w_per_s * 60
        limit = s.rising_w_per_min or 0.02 * p.cap_w
        if per_min > limit:
            yield Instance(
                {"scope": "site"},
                {"slope": _w(per_min), "limit": _w(limit), "it": _w(p.it_w), "cap": _w(p.cap_w)},
            )

    rules = [
        Rule(
            CAPACITY.SitePowerHigh,
            "warning",
            "Site IT draw at {pct} % of the cap",
            "Live IT draw {it} is {pct} % of the {cap} cap (warning above "
            f"{s.warn_pct:g} %); {{stale}} stale/offline nodes counted at their nameplate.",
            _site_draw(state, s, s.warn_pct, s.critical_pct),
            for_s=s.for_s,
            keep_firing_for_s=s.keep_firing_for_s,
        ),
        Rule(
            CAPACITY.SitePowerCritical,
            "critical",
            "Site IT draw at {pct} % of the cap",
            "Live IT draw {it} is {pct} % of the {cap} cap (critical above "
            f"{s.critical_pct:g} %): shed load or cap GPUs now.",
            _site_draw(state, s, s.critical_pct, None),
            for_s=s.for_s,
            keep_firing_for_s=s.keep_firing_for_s,
        ),
        Rule(
            CAPACITY.RackPowerOverLimit,
            "critical",
            "Rack {rack} draws {draw}, above its {limit} limit",
            "Rack {rack} ({nodes} nodes) draws {draw} of live power, above its {limit} limit.",
            racks,
            for_s=s.for_s,
            keep_firing_for_s=s.keep_firing_for_s,
        ),
        Rule(
            CAPACITY.SiteWorstCaseOverCap,
            "info",
            "Worst case {worst} is above the {cap} cap",
            "If every node drew its nameplate the site would draw {worst} against a {cap} cap "
            "(live draw {it}): the site is oversubscribed on nameplate.",
            worst,
        ),
        Rule(
            CAPACITY.SitePowerRising,
            "warning",
            "Site IT draw rising {slope} per minute",
            "Live IT draw ({it} of a {cap} cap) rises {slope} per minute, faster than "
            "{limit} per minute.",
            rising,
            keep_firing_for_s=s.keep_firing_for_s,
        ),
    ]
    return enabled_rules(rules, s.disabled, field="capacity.disabled")
