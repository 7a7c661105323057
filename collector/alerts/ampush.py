"""Pushing alerts to Alertmanager's v2 API, as Prometheus' notifier does.

For sites that already run Alertmanager (``[[alertmanagers]]``): every firing alert is
posted to ``POST /api/v2/alerts`` with its labels, annotations, ``startsAt`` and an
``endsAt`` in the future, so that Alertmanager's own routes, silences, inhibitions and
receivers apply. Alertmanager computes the same fingerprint from the labels as capwatch
(:mod:`collector.alerts.fingerprint`), so ``collector alerts`` and Alertmanager's UI name an
alert alike.

What is sent when (Prometheus' ``rules/alerting.go`` and ``notifier``):

* an alert that starts firing, at the next pass (the task wakes when :meth:`update` brings a
  change);
* a resolution, with ``endsAt`` = the resolution time, and again at each resend for
  15 minutes (``resolvedRetention``), so an Alertmanager that missed it still hears of it;
* every firing alert again every ``resend_interval`` (default 1 m), with ``endsAt`` =
  now + 4 x max(resend interval, evaluation interval): if capwatch dies, Alertmanager
  resolves its alerts by itself a few minutes later instead of keeping them for ever.

Unlike webhooks there is no outbox: what is sent is always the current state, built at send
time, so a retry never delivers a stale "firing" after the resolution. A failed push (5xx,
429, timeout, connection refused) is retried with capped exponential backoff carrying the
latest state; a 4xx is logged and dropped (the same body would be refused again). After a
restart the restored firing alerts are pushed at once; a resolution that a crash kept from
being pushed is made good by the ``endsAt`` of the last push. The task never touches the
store or the ingest path; its only inputs are :meth:`update` calls from the alert job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import httpx
from prometheus_client import CollectorRegistry, Counter

from collector.alerts.webhook import BodyAlert, answer_head, backoff_s, generator_url, rfc3339
from collector.counters import value
from shared.clock import Clock
from shared.logging import get_logger

if TYPE_CHECKING:
    from collector.settings import AlertmanagerSettings

__all__ = ["MAX_BATCH", "RESOLVED_RETENTION_S", "AlertmanagerPush", "PushMetrics", "postable_alert"]

log = get_logger("alertmanager")

RESOLVED_RETENTION_S: Final = 15 * 60.0
"""How long a resolution keeps being sent (Prometheus' ``resolvedRetention``)."""
MAX_BATCH: Final = 256
"""Alerts per request (Prometheus' notifier ``maxBatchSize``)."""
_VALIDITY_RESENDS: Final = 4
"""A firing alert's ``endsAt``: this many resend intervals ahead (Prometheus: 4)."""


def postable_alert(alert: BodyAlert, *, ends_at: float, external_url: str = "") -> dict[str, Any]:
    """One alert as Alertmanager's v2 ``postableAlert``."""
    out: dict[str, Any] = {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": rfc3339(ends_at),
    }
    url = generator_url(external_url, alert.fingerprint)
    if url:
        out["generatorURL"] = url
    return out


@dataclass(slots=True)
class _Target:
    cfg: AlertmanagerSettings
    dirty: set[str] = field(default_factory=set)
    """Fingerprints that changed since they were last pushed here."""
    next_full: float = float("-inf")
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0


class PushMetrics:
    """What the Alertmanager push counts, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, namespace="capwatch_collector", registry=registry)

        self.alerts_sent = counter(
            "alertmanager_alerts_sent", "Alerts the Alertmanagers accepted (one per push each)."
        )
        self.push_failed = counter(
            "alertmanager_push_failed", "Pushes that failed (no answer, or a 5xx): retried."
        )
        self.push_refused = counter(
            "alertmanager_push_refused", "Pushes an Alertmanager refused (a 4xx): dropped."
        )

    def counter_rows(self) -> dict[str, int]:
        """``alertmanager_alerts_sent``, ``alertmanager_push_failed``,
        ``alertmanager_push_refused``."""
        return {
            "alertmanager_alerts_sent": value(self.alerts_sent),
            "alertmanager_push_failed": value(self.push_failed),
            "alertmanager_push_refused": value(self.push_refused),
        }


class AlertmanagerPush:
    """Pushes the alert job's alerts to the configured Alertmanagers; see the module."""

    def __init__(
        self,
        targets: Sequence[AlertmanagerSettings],
        clock: Clock,
        *,
        eval_interval_s: float,
        external_url: str = "",
        metrics: PushMetrics | None = None,
        poll_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._targets = [_Target(cfg) for cfg in targets]
        self._clock = clock
        self._eval_interval_s = eval_interval_s
        self._external_url = external_url.rstrip("/")
        self.metrics = PushMetrics(CollectorRegistry()) if metrics is None else metrics
        self._poll_s = poll_s
        self._rng = rng or random.Random()
        self._firing: dict[str, BodyAlert] = {}
        self._resolved: dict[str, BodyAlert] = {}
        self._stop = asyncio.Event()

    # -- called by the alert job (synchronously, never waits) -----------------------------

    def update(
        self, firing: Sequence[BodyAlert], resolved: Sequence[BodyAlert], now: float
    ) -> None:
        """Take one evaluation's firing alerts (all of them) and those it resolved."""
        changed = {a.fingerprint for a in firing if a.fingerprint not in self._firing}
        self._firing = {a.fingerprint: a for a in firing}
        for a in resolved:
            if a.fingerprint not in self._firing:
                self._resolved[a.fingerprint] = a
                changed.add(a.fingerprint)
        for fp in changed & self._resolved.keys() & self._firing.keys():
            del self._resolved[fp]  # fired again
        cutoff = now - RESOLVED_RETENTION_S
        for fp in [fp for fp, a in self._resolved.items() if (a.ends_at or now) < cutoff]:
            del self._resolved[fp]
        if changed:
            for t in self._targets:
                t.dirty |= changed
                t.wake.set()

    def stop(self) -> None:
        """Make :meth:`run` return; a push in flight is abandoned."""
        self._stop.set()

    # -- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        """Push until :meth:`stop`."""
        async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
            tasks = []
            for t in self._targets:
                client = await stack.enter_async_context(
                    httpx.AsyncClient(
                        timeout=httpx.Timeout(t.cfg.timeout_s),
                        follow_redirects=False,
                        trust_env=False,  # settings come from the TOML file, not the env
                    )
                )
                tasks.append(
                    tg.create_task(self._loop(t, client), name=f"alertmanager-{t.cfg.name}")
                )
            await self._stop.wait()
            for task in tasks:
                task.cancel()

    def _body(self, fps: set[str] | None, now: float, resend_s: float) -> list[dict[str, Any]]:
        """The alerts to post: those of ``fps`` still known (``None``: all), current state."""
        valid_until = now + _VALIDITY_RESENDS * max(resend_s, self._eval_interval_s)
        out = []
        for source in (self._firing, self._resolved):
            for fp, a in source.items():
                if fps is None or fp in fps:
                    ends = valid_until if a.ends_at is None else a.ends_at
                    out.append(postable_alert(a, ends_at=ends, external_url=self._external_url))
        return out

    async def _loop(self, t: _Target, client: httpx.AsyncClient) -> None:
        resend_s = t.cfg.resend_s
        retry_at = float("-inf")
        while True:
            t.wake.clear()
            now = self._clock.time()
            full = now >= t.next_full
            if now >= retry_at and (full or t.dirty):
                sent = set(t.dirty)
                ok = await self._push(t, client, self._body(None if full else sent, now, resend_s))
                if ok:
                    t.dirty -= sent
                    t.failures = 0
                    if full:
                        t.next_full = now + resend_s
                else:
                    t.failures += 1
                    retry_at = self._clock.time() + backoff_s(t.failures, self._rng)
                continue
            deadline = retry_at if t.dirty else max(retry_at, t.next_full)
            wait = min(self._poll_s, max(0.0, deadline - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await t.wake.wait()

    async def _push(
        self, t: _Target, client: httpx.AsyncClient, alerts: list[dict[str, Any]]
    ) -> bool:
        """Post ``alerts`` in batches; ``False``: retry later (the state is sent again)."""
        for start in range(0, len(alerts), MAX_BATCH):
            batch = alerts[start : start + MAX_BATCH]
            body = json.dumps(batch, ensure_ascii=False, separators=(",", ":")).encode()
            try:
                async with asyncio.timeout(t.cfg.timeout_s):
                    # Streamed: of the answer only its head is read, as a webhook's
                    # (answer_head: a large file is never read; a short answer is read to
                    # its end, so the connection serves the next push).
                    async with client.stream(
                        "POST",
                        t.cfg.alerts_url,
                        content=body,
                        headers={"Content-Type": "application/json", "User-Agent": "capwatch"},
                    ) as resp:
                        status = resp.status_code
                        raw = await answer_head(resp)
            except (TimeoutError, httpx.HTTPError) as exc:
                error = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
                self.metrics.push_failed.inc()
                log.warning("alertmanager_push_failed", target=t.cfg.name, error=error)
                return False
            if 200 <= status < 300:
                self.metrics.alerts_sent.inc(len(batch))
                continue
            head = raw.decode("utf-8", "replace")
            if status == 429 or status >= 500:
                self.metrics.push_failed.inc()
                log.warning("alertmanager_push_failed", target=t.cfg.name, status=status)
                return False
            # Refused for good (a 4xx): sending the same alerts again would not help.
            self.metrics.push_refused.inc()
            log.error("alertmanager_push_refused", target=t.cfg.name, status=status, body=head)
        if alerts:
            log.debug("alertmanager_pushed", target=t.cfg.name, alerts=len(alerts))
        return True
