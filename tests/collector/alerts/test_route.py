"""Matchers, routes and the [[routes]] settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.alerts.group import Dispatcher, GroupAlert, Notified, needs_update
from collector.alerts.route import Route, default_route, make_matcher, parse_matcher, routes_for
from collector.settings import CollectorSettings
from shared.errors import ConfigError
from shared.settings import load_settings


@pytest.mark.parametrize(
    ("matcher", "labels", "expected"),
    [
        ("node=a", {"node": "a"}, True),
        ("node=a", {"node": "ab"}, False),
        ("node!=a", {"node": "b"}, True),
        ("node!=a", {}, True),
        ("node=", {}, True),  # a missing label is the empty string
        ("node=~x1000.*", {"node": "x1000c0"}, True),
        ("node=~x1000.*", {"node": "ax1000"}, False),  # anchored at the start
        ("node=~x1|y2", {"node": "x1z"}, False),  # anchored around the alternation
        ("node!~x1|y2", {"node": "y2"}, False),
        ("node!~x1|y2", {"node": "z"}, True),
        ('node="a b"', {"node": "a b"}, True),
    ],
)
def test_matchers_match_as_alertmanager(
    matcher: str, labels: dict[str, str], expected: bool
) -> None:
    """=, !=, =~, !~ with regexes anchored at both ends."""
    assert parse_matcher(matcher).matches(labels) is expected


def test_first_matching_route_wins_unless_continue() -> None:
    """Routes are tried in order; ``continue`` goes on to the next."""
    crit = Route((parse_matcher("severity=critical"),), ("pager",), continue_=True)
    gpu = Route((parse_matcher("alertname=~Gpu.*"),), ("gpu",))
    rest = default_route(["ops"])
    routes = [crit, gpu, rest]
    assert routes_for(routes, {"alertname": "GpuXid", "severity": "critical"}) == [crit, gpu]
    assert routes_for(routes, {"alertname": "NodeStale", "severity": "warning"}) == [rest]
    assert crit.key == '{}/{severity="critical"}'
    assert rest.key == "{}"


def test_needs_update_is_alertmanagers_dedup() -> None:
    """New firing, resolution of a notified alert, repeat; nothing else."""
    last = Notified(frozenset({"a"}), frozenset(), 100.0)
    assert needs_update(None, frozenset(), frozenset(), 60, 100) is False
    assert needs_update(None, frozenset({"a"}), frozenset(), 60, 100) is True
    assert needs_update(last, frozenset({"a"}), frozenset(), 60, 159) is False
    assert needs_update(last, frozenset({"a"}), frozenset(), 60, 160) is True
    assert needs_update(last, frozenset({"a", "b"}), frozenset(), 60, 101) is True
    assert needs_update(last, frozenset(), frozenset({"a"}), 60, 101) is True
    assert needs_update(last, frozenset({"a"}), frozenset({"c"}), 60, 101) is False


def _load(tmp_path: Path, toml: str) -> CollectorSettings:
    path = tmp_path / "c.toml"
    path.write_text('[[receivers]]\nname = "ops"\nurl = "http://127.0.0.1:9/h"\n' + toml)
    return load_settings(CollectorSettings, config_file=path)


def test_routes_load_with_their_defaults(tmp_path: Path) -> None:
    """Durations as text; receivers empty: every receiver; no routes: the default route."""
    s = _load(tmp_path, '[[routes]]\nmatch = ["node=~x.*"]\ngroup_by = ["..."]\ncontinue = true\n')
    (route,) = s.alert_routes()
    assert route.receivers == ("ops",)
    assert (route.group_wait_s, route.group_interval_s, route.repeat_interval_s) == (5, 60, 14400)
    assert route.continue_ is True
    assert route.group_labels({"a": "1", "b": "2"}) == {"a": "1", "b": "2"}
    (default,) = _load(tmp_path, "").alert_routes()
    assert (default.receivers, default.group_by, default.key) == (("ops",), ("alertname",), "{}")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[[routes]]\nreceivers = ["pager"]\n', "routes.0.receivers"),
        ('[[routes]]\nmatch = ["node=~x[1"]\n', "routes.0.match"),
        ('[[routes]]\ngroup_wait = "soon"\n', "routes.0.group_wait"),
        ('[[routes]]\nrepeat_interval = "4 hours"\n', "routes.0.repeat_interval"),
        ("[[routes]]\ngroup_bye = []\n", "routes.0.group_bye"),
        ('[[routes]]\ngroup_by = ["rack-name"]\n', "routes.0.group_by"),
        ('[[routes]]\ngroup_by = ["node", "node"]\n', "routes.0.group_by"),
        ('[[routes]]\ngroup_by = ["...", "node"]\n', "routes.0.group_by"),
    ],
)
def test_a_bad_route_is_one_line_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    """Unknown receiver, bad regex, bad duration, unknown key, a group_by that Alertmanager
    refuses (not a label name, a label twice, "..." with others): one line naming it."""
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, toml)
    assert f"'{key}'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_route_durations_take_prometheus_grammar_and_refusals_say_what_to_write(
    tmp_path: Path,
) -> None:
    """``1h30m`` is read as Prometheus reads it; a decimal (once accepted) is refused with the
    exact text to write instead, naming the key."""
    s = _load(tmp_path, '[[routes]]\ngroup_wait = "0"\nrepeat_interval = "1d12h"\n')
    (route,) = s.alert_routes()
    assert (route.group_wait_s, route.repeat_interval_s) == (0.0, 129_600.0)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, '[[routes]]\ngroup_interval = "1.5m"\n')
    assert str(caught.value).startswith(
        "setting 'routes.0.group_interval' = '1.5m': not a duration: whole numbers only; "
        "write '1m30s' instead"
    )


def test_two_routes_with_one_group_key_are_two_groups() -> None:
    """A catch-all route with ``continue`` before another catch-all: both receivers hear
    of the alert (Alertmanager keeps groups per route), each logged on its own."""
    first = Route((), ("a",), group_wait_s=0.0, continue_=True)
    second = Route((), ("b",), group_wait_s=0.0)
    dispatcher = Dispatcher([first, second])
    alert = GroupAlert("f1", {"alertname": "A"}, {}, 1.0)
    dispatcher.observe([alert], [], 1.0)
    flushes, logged, gone = dispatcher.flush(1.0, lambda alert: False)
    assert [(f.group_key, f.route.receivers) for f in flushes] == [
        ('{}:{alertname="A"}', ("a",)),
        ('{}:{alertname="A"}', ("b",)),
    ]
    assert sorted(logged) == ['{}:{alertname="A"} -> a', '{}:{alertname="A"} -> b']
    assert gone == []


def test_a_nested_quantifier_against_a_long_node_name_answers_at_once() -> None:
    """``(x.*)*n0`` against a 63-character node name: RE2 answers in linear time; Python's
    backtracking ``re`` ran for hours (a hostile node picks its name). Run in a child process
    so a regression fails at the guard instead of hanging the suite."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "from collector.alerts.route import parse_matcher\n"
        "m = parse_matcher('node=~(x.*)*n0')\n"
        "print(m.matches({'node': 'x' * 62 + 'z'}), m.matches({'node': 'xabxn0'}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("text", ["node=~(?=x)x.*", "node=~(a)\\1"])
def test_regex_syntax_is_alertmanagers_re2(text: str) -> None:
    """Lookarounds and backreferences, which Alertmanager (Go's RE2) refuses, are refused."""
    with pytest.raises(ValueError, match="bad regular expression"):
        parse_matcher(text)


def test_route_key_sorts_and_escapes_matchers_as_alertmanager() -> None:
    """``{}/{a="x",a!~"x",z="1"}``: sorted by name, value, operator; only ``\\``, newline and
    ``"`` escaped in a value (``Matcher.String()``), a tab or U+00A0 kept as it is."""
    route = Route(
        (
            parse_matcher("z=1"),
            parse_matcher("a!~x"),
            parse_matcher("a=x"),
            make_matcher("rack", "=", 'r\\1\n"b"\t\u00a0.'),
        ),
        ("ops",),
    )
    assert route.key == '{}/{a="x",a!~"x",rack="r\\\\1\\n\\"b\\"\t\u00a0.",z="1"}'
