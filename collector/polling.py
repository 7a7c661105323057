"""What every out-of-band poller of the collector does alike: a target's backoff after a
failed poll, the log line when its outcome changes, and the schedule of their rounds
(Redfish BMCs, SNMP PDUs).

A target whose poll failed is retried after ``interval x 2^failures`` (at most
``backoff_max_s``) times a random factor in [0.5, 1) (jitter: targets that failed together,
a management switch rebooting, come back spread out); ``at_once`` (a refused login: devices
lock an account after a few) backs off to ``backoff_max_s`` at once. Each change of outcome
is logged once, not every poll.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from prometheus_client import Gauge

if TYPE_CHECKING:
    from shared.clock import Clock

__all__ = ["Target", "count_outcome", "on_grid"]


async def on_grid(
    clock: Clock, interval_s: float, one_round: Callable[[float], Awaitable[None]]
) -> NoReturn:
    """Run ``one_round(now)`` at the start and every ``interval_s`` after it, on that grid
    (monotonic clock), until cancelled; a round that ends late skips the starts it missed
    rather than running them back to back."""
    start = clock.monotonic()
    n = 0
    while True:
        await one_round(clock.monotonic())
        n = max(n + 1, int((clock.monotonic() - start) / interval_s) + 1)
        await asyncio.sleep(max(0.0, start + n * interval_s - clock.monotonic()))


class Target(Protocol):
    """What the backoff keeps of one polled device."""

    failures: int
    retry_at: float
    """Monotonic time before which it is not polled."""
    last_outcome: str | None
    counts: dict[str, int]
    """Polls by outcome, since the collector started."""


def count_outcome(
    target: Target,
    outcome: str,
    *,
    now: float,
    interval_s: float,
    backoff_max_s: float,
    rng: random.Random,
    in_backoff: Gauge,
    log: Any,
    event: str,
    at_once: bool = False,
    **log_fields: Any,
) -> float | None:
    """Count ``outcome`` for ``target`` and set its next try; return the delay before it
    (``None``: ``ok``, polled again next round). Logs on ``log`` (the poller's structlog
    logger) ``<event>_failed`` when a failing
    outcome differs from the last one and ``<event>_recovered`` at the first ``ok`` after
    failures, with ``log_fields``."""
    target.counts[outcome] = target.counts.get(outcome, 0) + 1
    previous, target.last_outcome = target.last_outcome, outcome
    if outcome == "ok":
        if target.failures:
            log.info(f"{event}_recovered", failures=target.failures, **_ids(log_fields))
            target.failures = 0
            in_backoff.dec()
        return None
    if target.failures == 0:
        in_backoff.inc()
    target.failures += 1
    delay = backoff_max_s if at_once else min(backoff_max_s, interval_s * 2.0**target.failures)
    target.retry_at = now + delay * rng.uniform(0.5, 1.0)
    if outcome != previous:
        log.warning(f"{event}_failed", outcome=outcome, retry_in_s=round(delay, 1), **log_fields)
    return delay


def _ids(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields naming the target (a recovery line needs no failure detail)."""
    return {k: v for k, v in fields.items() if k in ("node", "pdu", "rack", "url", "host")}
