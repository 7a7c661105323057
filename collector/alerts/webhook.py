"""Webhook notifications: Alertmanager's body (version 4), signing, and what a response means.

Pure functions, no I/O: :mod:`collector.alerts.delivery` sends, :mod:`collector.alerts.job`
builds the bodies when it records the alert changes.

Body: exactly Alertmanager's webhook JSON (``notify/webhook/webhook.go``), so a receiver
written for Alertmanager reads capwatch unchanged. :func:`group_body` carries a group's
alerts (:mod:`collector.alerts.group`); :func:`webhook_body` one alert, as a route with
``group_by: ['...']`` (every label) would send it.

Signature (when the receiver has a secret), as Grafana signs webhooks (grafana/alerting
``http/hmac.go``): HMAC-SHA256 over ``timestamp + ":" + body``, lowercase hex without prefix,
the unix seconds in the timestamp header; with no timestamp header, over the body alone.

Retry policy (:func:`classify`): 2xx delivered; 5xx, 429, timeouts and connection errors
retried with capped exponential backoff and jitter (429 not before its ``Retry-After``, nor
before that backoff); any other status (4xx, and 3xx: redirects are not followed) is a dead
letter at once.
Alertmanager retries 5xx forever and never 429; capwatch retries both, bounded by the
receiver's ``max_age_s``.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import hmac
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

import msgspec

from collector.cooperate import YIELD_EVERY, yield_gil

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ANSWER_HEAD_BYTES",
    "BACKOFF_CAP_S",
    "BACKOFF_INITIAL_S",
    "ZERO_TIME",
    "BodyAlert",
    "Verdict",
    "answer_head",
    "backoff_s",
    "classify",
    "generator_url",
    "go_quote",
    "group_body",
    "group_key",
    "retry_after_s",
    "rfc3339",
    "sign",
    "webhook_body",
]

ANSWER_HEAD_BYTES: Final = 256
"""What is read of a receiver's answer (for the log and the outbox's last error)."""
ZERO_TIME: Final = "0001-01-01T00:00:00Z"
"""Go's zero time as Alertmanager prints ``endsAt`` of a firing alert."""
BACKOFF_INITIAL_S: Final = 0.5
BACKOFF_FACTOR: Final = 2.0
BACKOFF_CAP_S: Final = 60.0


@functools.lru_cache(maxsize=4096)  # a mass event's alerts share a few instants
def rfc3339(t: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: ``2024-05-01T12:00:00.250Z``."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generator_url(external_url: str, fingerprint: str) -> str:
    """Where an alert is shown (``generatorURL``): empty without an external URL."""
    return f"{external_url}/alerts?fingerprint={fingerprint}" if external_url else ""


_GO_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def go_quote(value: str | bytes) -> str:
    r"""``value`` as Go's ``strconv.Quote`` writes it (``strconv/quote.go``), in double quotes.

    ``"`` and ``\`` are backslashed; a printable character is kept as it is, non-ASCII ones
    too (Go's ``IsPrint``: Unicode categories L, M, N, P, S and the ASCII space, which is
    exactly what :meth:`str.isprintable` accepts); the others are escaped: ``\a \b \f
    \n \r \t \v``, other ASCII controls and DEL as ``\x1b``/``\x7f`` (Go 1.19 and
    later), the rest as ``\u00a0``, ``\u2028``, ``\ufeff`` or ``\U000e0001``. Both
    languages take the categories from their Unicode tables, so a character assigned in a
    Unicode version only one of them knows is escaped by the other one only.

    ``bytes`` are a Go string exactly: each byte that is not part of valid UTF-8 is written
    ``\xff``. A Python ``str`` can hold a lone surrogate, which no Go string can: capwatch
    hands labels to Go as JSON, and Go's JSON decoder turns a lone surrogate into U+FFFD,
    a printable character, so that is what is written for one.
    """
    if isinstance(value, bytes):
        # Each invalid byte becomes one of U+DC80..U+DCFF, as Go's decoder takes it: one at a time.
        text, invalid = value.decode("utf-8", "surrogateescape"), "\\x{:02x}"
    else:
        text, invalid = value, "\ufffd"
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(invalid.format(code & 0xFF))
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _label_set(labels: Mapping[str, str]) -> str:
    """prometheus/common ``LabelSet.String()``: ``{a="1", b="2"}``, names sorted and written
    as they are, values quoted by :func:`go_quote`."""
    return "{" + ", ".join(f"{k}={go_quote(labels[k])}" for k in sorted(labels)) + "}"


def group_key(route_key: str, group_labels: Mapping[str, str]) -> str:
    """Alertmanager's ``groupKey`` (``dispatch.go``, ``aggrGroup.GroupKey``): the route's key,
    ``:``, the group labels."""
    return f"{route_key}:{_label_set(group_labels)}"


def webhook_body(
    *,
    receiver: str,
    status: Literal["firing", "resolved"],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    fingerprint: str,
    starts_at: float,
    ends_at: float | None,
    external_url: str = "",
    max_alerts: int = 0,
) -> str:
    """The version-4 JSON body announcing one alert's change (``ends_at`` None: firing)."""
    alert = BodyAlert(fingerprint, labels, annotations, starts_at, ends_at)
    del status  # the alert's own: firing unless it has ended
    return group_body(
        receiver=receiver,
        route_key="{}",
        group_labels=labels,
        alerts=[alert],
        external_url=external_url,
        max_alerts=max_alerts,
    )


class BodyAlert(NamedTuple):
    """One alert of a body (``ends_at`` None: firing)."""

    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None = None


def _common(maps: list[Mapping[str, str]]) -> dict[str, str]:
    """The pairs every mapping has (Alertmanager's ``commonLabels``)."""
    if not maps:
        return {}
    first = dict(maps[0])
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def group_body(
    *,
    receiver: str,
    route_key: str,
    group_labels: Mapping[str, str],
    alerts: list[BodyAlert],
    external_url: str = "",
    max_alerts: int = 0,
) -> str:
    """The version-4 JSON body of one group's notification: every alert given, firing and
    resolved; ``status`` firing if any fires; at most ``max_alerts`` (0: all), the rest
    counted in ``truncatedAlerts``."""
    kept = alerts if max_alerts <= 0 else alerts[:max_alerts]
    items = []
    for i, a in enumerate(kept, 1):
        if not i % YIELD_EVERY:  # a mass event's group: 12,500 alerts (collector.cooperate)
            yield_gil()
        items.append(
            {
                "status": "firing" if a.ends_at is None else "resolved",
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": ZERO_TIME if a.ends_at is None else rfc3339(a.ends_at),
                "generatorURL": generator_url(external_url, a.fingerprint),
                "fingerprint": a.fingerprint,
            }
        )
    body = {
        "receiver": receiver,
        "status": "firing" if any(a.ends_at is None for a in alerts) else "resolved",
        "alerts": items,
        "groupLabels": dict(group_labels),
        "commonLabels": _common([a.labels for a in alerts]),
        "commonAnnotations": _common([a.annotations for a in alerts]),
        "externalURL": external_url,
        "version": "4",
        "groupKey": group_key(route_key, group_labels),
        "truncatedAlerts": len(alerts) - len(kept),
    }
    # msgspec writes what json.dumps(ensure_ascii=False, separators=(",", ":")) writes, 5x
    # faster: a mass event's one group of 12,500 alerts is 5.5 MB.
    return msgspec.json.encode(body).decode()


def sign(secret: bytes, body: bytes, timestamp: str | None) -> str:
    """HMAC-SHA256 of ``timestamp:body`` (or of ``body`` without a timestamp), lowercase hex."""
    message = body if timestamp is None else timestamp.encode() + b":" + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def backoff_s(attempts: int, rng: random.Random) -> float:
    """Delay before the next try after ``attempts`` failed ones: 0.5 s doubling, capped at
    60 s, with equal jitter (between half and all of it) so receivers that come back are not
    hit by every collector at once."""
    exponent = min(max(0, attempts - 1), 32)  # past the cap anyway; never a float overflow
    delay = min(BACKOFF_CAP_S, BACKOFF_INITIAL_S * BACKOFF_FACTOR**exponent)
    return delay / 2 + rng.uniform(0, delay / 2)


def retry_after_s(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # RFC 9110 delta-seconds: ASCII digits only
        # ('²' and '١' are str.isdigit too: float('²') raised out of the delivery).
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class Verdict(NamedTuple):
    """What an attempt's result means: ``delivered``, ``retry`` (after ``wait_s``) or ``dead``."""

    kind: Literal["delivered", "retry", "dead"]
    wait_s: float = 0.0


def classify(
    status: int | None, retry_after: str | None, attempts: int, now: float, rng: random.Random
) -> Verdict:
    """The policy in the module docstring; ``status`` None is a timeout or connection error."""
    if status is not None and 200 <= status < 300:
        return Verdict("delivered")
    if status is None or status >= 500:
        return Verdict("retry", backoff_s(attempts, rng))
    if status == 429:
        # Retry-After never shortens the backoff: 'Retry-After: 0' (or a date past) sent
        # the next try at once, in a loop as fast as the receiver answered.
        backoff = backoff_s(attempts, rng)
        wait = retry_after_s(retry_after, now)
        return Verdict("retry", backoff if wait is None else max(wait, backoff))
    return Verdict("dead")


async def answer_head(resp: httpx.Response) -> bytes:
    """The first :data:`ANSWER_HEAD_BYTES` of a streamed answer (``client.stream``); the
    rest is never read, so a URL that answers with a large file costs nothing. A shorter
    answer is read to its end, and that is what lets httpx keep the connection for the
    next request: one left unread is closed (a TCP, and TLS, handshake per push)."""
    head = b""
    async for chunk in resp.aiter_raw():
        head += chunk
        if len(head) >= ANSWER_HEAD_BYTES:
            break
    return head[:ANSWER_HEAD_BYTES]
