"""Webhook pure parts: retry policy, Retry-After, backoff bounds, signing, truncation, the
``groupKey`` and Go's quoting in it."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from pathlib import Path

import pytest

from collector.alerts.webhook import (
    BACKOFF_CAP_S,
    BodyAlert,
    backoff_s,
    classify,
    go_quote,
    group_body,
    group_key,
    retry_after_s,
    sign,
    webhook_body,
)
from collector.settings import CollectorSettings
from shared.errors import ConfigError
from shared.settings import load_settings

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (500, "retry"),
        (503, "retry"),
        (None, "retry"),
        (429, "retry"),
        (400, "dead"),
        (401, "dead"),
        (404, "dead"),
        (301, "dead"),
    ],
)
def test_classify_retries_5xx_429_and_transport_errors_only(status: int | None, kind: str) -> None:
    """2xx delivered; 5xx, 429 and no answer retried; other statuses are dead letters."""
    assert classify(status, None, 1, NOW, random.Random(1)).kind == kind


def test_retry_after_seconds_and_http_date() -> None:
    """``Retry-After`` as delta-seconds or an HTTP date; garbage is ignored."""
    assert retry_after_s("120", NOW) == 120.0
    assert retry_after_s("Wed, 15 Nov 2023 00:13:20 GMT", NOW) == 7200.0
    assert retry_after_s("Tue, 14 Nov 2023 22:00:00 GMT", NOW) == 0.0  # in the past
    assert retry_after_s("soon", NOW) is None
    assert retry_after_s(None, NOW) is None
    assert classify(429, "30", 1, NOW, random.Random(1)).wait_s == 30.0


def test_backoff_doubles_from_half_a_second_with_jitter_and_caps_at_60_s() -> None:
    """Attempt n waits between half and all of min(60, 0.5 * 2**(n-1))."""
    rng = random.Random(3)
    for attempts, full in [(1, 0.5), (2, 1.0), (3, 2.0), (8, 60.0), (50, 60.0)]:
        waits = [backoff_s(attempts, rng) for _ in range(200)]
        assert full / 2 <= min(waits) <= max(waits) <= full
    assert backoff_s(10_000, rng) <= BACKOFF_CAP_S


def test_signature_is_grafanas_construction() -> None:
    """HMAC-SHA256 over ``ts:body`` in lowercase hex; over the body alone without a ts."""
    body = b'{"a":1}'
    assert (
        sign(b"k", body, "1700000000")
        == hmac.new(b"k", b"1700000000:" + body, hashlib.sha256).hexdigest()
    )
    assert sign(b"k", body, None) == hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_group_key_quotes_values_like_alertmanager() -> None:
    """``{}:{a="x", b="y \\"q\\""}``: sorted names, Go-quoted values, ``, `` between."""
    assert group_key("{}", {"b": 'y "q"', "a": "x"}) == '{}:{a="x", b="y \\"q\\""}'


# What Go's strconv.Quote returns. The first rows are Go's own table (src/strconv/quote_test.go,
# `quotetests`, the Quote column); the others follow from quote.go's rules (IsPrint: Unicode
# categories L, M, N, P, S and the ASCII space; DEL as \x7f since Go 1.19).
_GO_QUOTE_CASES = [
    pytest.param("\a\b\f\r\n\t\v", r'"\a\b\f\r\n\t\v"', id="go-named-escapes"),
    pytest.param("\\", r'"\\"', id="go-backslash"),
    pytest.param(b"abc\xffdef", r'"abc\xffdef"', id="go-invalid-utf8-byte"),
    pytest.param("\u263a", '"\u263a"', id="go-printable-non-ascii-kept"),
    pytest.param("\U0010ffff", r'"\U0010ffff"', id="go-unassigned-astral"),
    pytest.param("\x04", r'"\x04"', id="go-ascii-control"),
    pytest.param("!\u00a0!\u2000!\u3000!", r'"!\u00a0!\u2000!\u3000!"', id="go-spaces-not-print"),
    pytest.param("", '""', id="empty"),
    pytest.param('say "hi"', r'"say \"hi\""', id="double-quote"),
    pytest.param("it's `x`", '"it\'s `x`"', id="single-quote-and-backtick-kept"),
    pytest.param("\x00\x1b\x1f", r'"\x00\x1b\x1f"', id="nul-esc-us"),
    pytest.param("\x7f", r'"\x7f"', id="del"),
    pytest.param("\x85", r'"\u0085"', id="c1-control-nel"),
    pytest.param("A\u00a0B", r'"A\u00a0B"', id="no-break-space"),
    pytest.param("\u00ad", r'"\u00ad"', id="soft-hyphen-format"),
    pytest.param("a\u2028b\u2029c", r'"a\u2028b\u2029c"', id="line-paragraph-separators"),
    pytest.param("\ufeffrack", r'"\ufeffrack"', id="byte-order-mark"),
    pytest.param("a\u200bb", r'"a\u200bb"', id="zero-width-space-format"),
    pytest.param("\ue000", r'"\ue000"', id="private-use"),
    pytest.param("\U000e0001", r'"\U000e0001"', id="astral-format-tag"),
    pytest.param("caf\u00e9 e\u0301 \u4e2d", '"caf\u00e9 e\u0301 \u4e2d"', id="letters-marks-kept"),
    pytest.param("\U0001f525 \u00bd \u2603", '"\U0001f525 \u00bd \u2603"', id="emoji-symbols"),
    pytest.param("\ufffd", '"\ufffd"', id="replacement-char-kept"),
    pytest.param(b"\xed\xa0\x80", r'"\xed\xa0\x80"', id="utf8-encoded-surrogate-bytes"),
    pytest.param(b"\xe2\x82A", r'"\xe2\x82A"', id="truncated-sequence"),
    pytest.param(b"\xc0\x80", r'"\xc0\x80"', id="overlong-nul"),
    # A Python str may hold a lone surrogate; it reaches Go as JSON, which makes it U+FFFD.
    pytest.param("a\ud800b", '"a\ufffdb"', id="lone-surrogate-as-go-decodes-it"),
]


@pytest.mark.parametrize(("value", "quoted"), _GO_QUOTE_CASES)
def test_go_quote_writes_what_go_strconv_quote_writes(value: str | bytes, quoted: str) -> None:
    """Each case as Go's ``strconv.Quote`` prints it."""
    assert go_quote(value) == quoted


def test_group_key_quotes_values_with_go_escapes_not_json_ones() -> None:
    """A rack named ``A<U+00A0>B`` is ``"A\\u00a0B"`` in the groupKey, as Alertmanager's; JSON's
    escapes differ for ESC, DEL and U+2028 too."""
    labels = {"rack": "A\u00a0B", "zone": "\x1b\x7f\u2028"}
    assert group_key("{}", labels) == r'{}:{rack="A\u00a0B", zone="\x1b\x7f\u2028"}'
    body = json.loads(
        group_body(
            receiver="ops",
            route_key="{}",
            group_labels=labels,
            alerts=[BodyAlert("fp", {"alertname": "A", **labels}, {}, NOW)],
        )
    )
    assert body["groupKey"] == r'{}:{rack="A\u00a0B", zone="\x1b\x7f\u2028"}'
    assert body["groupLabels"] == labels  # the JSON fields themselves keep the raw values


def test_max_alerts_truncates_and_counts() -> None:
    """With max_alerts the field is kept (0 here: one alert per message in this slice)."""
    body = json.loads(
        webhook_body(
            receiver="r",
            status="firing",
            labels={"alertname": "A"},
            annotations={},
            fingerprint="0" * 16,
            starts_at=NOW,
            ends_at=None,
            max_alerts=1,
        )
    )
    assert (len(body["alerts"]), body["truncatedAlerts"]) == (1, 0)


def test_bad_receiver_setting_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """A receiver URL that is not http(s) names ``receivers.0.url``; the secret never shows."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[receivers]]\nname = "ops"\nurl = "ftp://x"\nsecret = "hunter2-webhook"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(CollectorSettings, config_file=cfg)
    assert info.value.field == "receivers.0.url"
    assert "\n" not in str(info.value)
    assert "hunter2" not in str(info.value)


def test_receivers_load_from_toml_and_hide_the_secret(tmp_path: Path) -> None:
    """``[[receivers]]`` tables; the secret is a SecretStr (``**********`` in any repr)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[receivers]]\nname = "ops"\nurl = "https://hooks.example/x"\nsecret = "hunter2"\n'
        'timeout_s = 3\nsignature_header = "X-Grafana-Alerting-Signature"\n'
    )
    s = load_settings(CollectorSettings, config_file=cfg)
    (r,) = s.receivers
    assert (r.name, str(r.url), r.timeout_s, r.max_age_s) == (
        "ops",
        "https://hooks.example/x",
        3.0,
        3600.0,
    )
    assert r.secret is not None
    assert r.secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)


def test_two_receivers_with_one_name_are_refused(tmp_path: Path) -> None:
    """Receiver names are unique (outbox rows name their receiver)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[receivers]]\nname = "ops"\nurl = "http://a/"\n'
        '[[receivers]]\nname = "ops"\nurl = "http://b/"\n'
    )
    with pytest.raises(ConfigError, match="receiver names must be unique") as info:
        load_settings(CollectorSettings, config_file=cfg)
    assert info.value.field == "receivers"


def test_group_body_carries_the_group_common_labels_and_truncates() -> None:
    """Three alerts, max_alerts 2: two sent, one counted; common labels and annotations are
    those all three share; status firing while any fires."""
    alerts = [
        BodyAlert(
            f"f{i}", {"alertname": "A", "node": f"n{i}"}, {"summary": f"s{i}", "x": "1"}, 10.0
        )
        for i in range(3)
    ]
    alerts[0] = alerts[0]._replace(ends_at=20.0)
    body = json.loads(
        group_body(
            receiver="ops",
            route_key='{}/{severity="critical"}',
            group_labels={"alertname": "A"},
            alerts=alerts,
            max_alerts=2,
        )
    )
    assert body["groupKey"] == '{}/{severity="critical"}:{alertname="A"}'
    assert body["status"] == "firing"
    assert [a["status"] for a in body["alerts"]] == ["resolved", "firing"]
    assert body["truncatedAlerts"] == 1
    assert body["commonLabels"] == {"alertname": "A"}
    assert body["commonAnnotations"] == {"x": "1"}
    assert body["groupLabels"] == {"alertname": "A"}
    only_resolved = json.loads(
        group_body(receiver="ops", route_key="{}", group_labels={}, alerts=alerts[:1])
    )
    assert only_resolved["status"] == "resolved"
