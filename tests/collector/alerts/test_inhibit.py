"""Inhibit rules as Alertmanager applies them, and how they are configured and recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.alerts.fingerprint import fingerprint
from collector.alerts.route import parse_matcher
from collector.alerts.silence import (
    DEFAULT_INHIBIT_RULES,
    Inhibitor,
    InhibitRule,
    SourceKeys,
    inhibit_rules_from_json,
    inhibit_rules_to_json,
)
from collector.settings import CollectorSettings
from shared.errors import ConfigError
from shared.settings import load_settings

CRIT = {"alertname": "RackPower", "severity": "critical", "rack": "x1000", "cluster": "a"}
WARN = {"alertname": "RackPower", "severity": "warning", "rack": "x1000", "cluster": "a"}
WARN_OTHER = {"alertname": "RackPower", "severity": "warning", "rack": "x1001", "cluster": "a"}

SEVERITY_RULE = InhibitRule(
    (parse_matcher("severity=critical"),),
    (parse_matcher("severity=warning"),),
    ("alertname", "rack"),
)


def _inhibitor(rules: tuple[InhibitRule, ...], *firing: dict[str, str]) -> Inhibitor:
    return Inhibitor(rules, ((fingerprint(labels), labels) for labels in firing))


def test_a_critical_inhibits_the_warning_with_the_same_equal_labels_only() -> None:
    """Alertmanager's classic rule: critical mutes warning of the same alertname and rack."""
    inhibitor = _inhibitor((SEVERITY_RULE,), CRIT, WARN, WARN_OTHER)
    assert inhibitor.inhibits(WARN, fingerprint(WARN))
    assert not inhibitor.inhibits(WARN_OTHER, fingerprint(WARN_OTHER))
    assert not inhibitor.inhibits(CRIT, fingerprint(CRIT))


def test_a_label_missing_on_both_counts_as_equal() -> None:
    """``equal`` on a label neither alert has: they agree (Alertmanager compares values,
    and a missing label's value is empty)."""
    rule = InhibitRule(
        (parse_matcher("alertname=SiteDown"),), (parse_matcher("alertname!=SiteDown"),), ("dc",)
    )
    down = {"alertname": "SiteDown", "severity": "critical"}
    assert _inhibitor((rule,), down).inhibits(WARN, fingerprint(WARN))
    assert not _inhibitor((rule,), down).inhibits({**WARN, "dc": "zrh"}, "x")


def test_an_alert_never_inhibits_itself() -> None:
    """An alert matching both source and target is not muted by itself, only by another."""
    rule = InhibitRule((parse_matcher("rack=x1000"),), (parse_matcher("rack=x1000"),), ("rack",))
    assert not _inhibitor((rule,), WARN).inhibits(WARN, fingerprint(WARN))
    assert _inhibitor((rule,), WARN, CRIT).inhibits(WARN, fingerprint(WARN))


def test_the_default_is_node_offline_muting_its_node() -> None:
    """Unset ``inhibit_rules``: NodeOffline on n1 mutes n1's other alerts, not n2's."""
    offline = {"alertname": "NodeOffline", "severity": "critical", "node": "n1"}
    hot = {"alertname": "GpuTemperature", "severity": "warning", "node": "n1", "gpu": "0"}
    inhibitor = _inhibitor(CollectorSettings().alert_inhibit_rules(), offline)
    assert inhibitor.inhibits(hot, fingerprint(hot))
    assert not inhibitor.inhibits({**hot, "node": "n2"}, "x")
    assert not inhibitor.inhibits(offline, fingerprint(offline))


def test_rules_round_trip_through_their_recorded_form() -> None:
    """What the collector records in ``meta`` reads back as the same rules, regexes
    (backslashes, unicode) intact."""
    rules = (
        *DEFAULT_INHIBIT_RULES,
        InhibitRule((parse_matcher(r"node=~x\d+c0.*"),), (parse_matcher("site!=Zürich"),), ()),
    )
    assert inhibit_rules_from_json(inhibit_rules_to_json(rules)) == rules


@pytest.mark.parametrize(
    ("target", "equal", "key", "says"),
    [
        ("node=~(", "node", "target_matchers", "bad regular expression"),
        # as group_by says it: what a label name is, the fix
        ("severity=warning", "rack-name", "equal", "'rack-name' is not a label name ([a-zA-Z_]"),
    ],
)
def test_a_bad_inhibit_rule_in_the_config_names_the_key(
    tmp_path: Path, target: str, equal: str, key: str, says: str
) -> None:
    """A bad matcher, or an ``equal`` entry that is not a label name, in
    ``[[inhibit_rules]]`` is one line naming the table, the field and what is wrong."""
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        '[[inhibit_rules]]\nsource_matchers = ["alertname=NodeOffline"]\n'
        f'target_matchers = ["{target}"]\nequal = ["{equal}"]\n'
    )
    with pytest.raises(ConfigError, match=rf"inhibit_rules\.0\.{key}") as err:
        load_settings(CollectorSettings, config_file=cfg)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_source_keys_kept_across_evaluations_inhibit_as_keys_made_anew() -> None:
    """The alert job keeps one :class:`SourceKeys` from an evaluation to the next: each
    evaluation mutes what its own firing alerts mute, whichever fired before; the alerts no
    longer firing are forgotten once they outnumber those firing."""
    rules = (SEVERITY_RULE, *DEFAULT_INHIBIT_RULES)
    offline = {"alertname": "NodeOffline", "severity": "critical", "node": "n1"}
    hot = {"alertname": "GpuHot", "severity": "warning", "node": "n1"}
    xid = {"alertname": "GpuXid", "severity": "warning", "node": "n1"}
    kept = SourceKeys(rules)
    evaluations = [
        ((offline, hot, xid), [hot, xid]),
        ((hot, xid), []),  # a source of no rule stays one
        ((CRIT, WARN, WARN_OTHER), [WARN]),
        ((offline, hot, CRIT, WARN), [hot, WARN]),
        ((xid, WARN), []),
    ]
    for firing, muted in evaluations:
        inhibitor = Inhibitor(rules, ((fingerprint(a), a) for a in firing), sources=kept)
        assert [a for a in firing if inhibitor.inhibits(a, fingerprint(a))] == muted
    many = [{**WARN, "rack": f"r{i}"} for i in range(3000)]
    for labels in many:
        kept.of(fingerprint(labels), labels)
    kept.keep(2, (fingerprint(a) for a in (CRIT, hot)))
    assert len(kept) == 2
    assert Inhibitor(rules, [(fingerprint(CRIT), CRIT)], sources=kept).inhibits(WARN, "w")
    with pytest.raises(ValueError, match="other inhibit rules"):
        Inhibitor((SEVERITY_RULE,), [], sources=kept)
