"""Notification delivery: the task that sends the outbox, and never writes the store.

Two transports, one path: a webhook receiver POSTs the body; an ``exec`` receiver runs its
command with the body on stdin (:mod:`collector.alerts.actions`). Everything below (outbox,
hand-off, workers, ``max_in_flight``, ``timeout_s``, retries, dead letters) is the same.

Flow (nothing is lost at any step)::

    AlertJob (in the writer) --commit: alert change + outbox rows, one transaction-->
        offer(entries) --bounded hand-off queue--> dispatcher --> one worker per receiver
        --HTTP--> receiver;  outcome --> reporter --writer's queue--> Writer.write_outbox

* The outbox row is committed with the alert change it announces, before anyone hears of
  it. :meth:`Delivery.offer` never blocks the writer: when the hand-off queue is full it
  only asks for a rescan, and the dispatcher reads the pending rows back from the store
  (its own read-only connection) then, at start, and every ``rescan_s`` (which is also how
  ``collector alerts --redeliver`` reaches it).
* Outcomes (delivered, retry at, dead letter) go back to the writer, which owns the store.
  They are coalesced per notification, so a dead receiver costs the writer's queue at most a
  slot at a time, not one per attempt, and the writer is never made to wait for the delivery.
* Each receiver has its own worker, ``httpx.AsyncClient`` and at most ``max_in_flight``
  requests, each bounded by ``timeout_s`` in total: a dead or slow receiver delays only its
  own notifications.
* A crash or stop before an outcome is recorded leaves the row pending: the next collector
  sends it again, with the same ``Idempotency-Key`` (at least once; receivers dedup on it).

Retry policy and body: :mod:`collector.alerts.webhook`. A notification whose next try would
fall after its ``expires_at`` (created + the receiver's ``max_age_s``), or that is found
past it, becomes a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from prometheus_client import CollectorRegistry, Counter

from collector.alerts.actions import run_action
from collector.alerts.webhook import Verdict, answer_head, backoff_s, classify, sign
from collector.counters import labelled_values, value
from collector.paths import StoreTarget
from collector.store.alerts import OutboxEntry, OutboxOutcome, OutboxReport, pending_outbox
from collector.store.db import Store
from shared.clock import Clock
from shared.errors import StoreError
from shared.logging import get_logger

if TYPE_CHECKING:
    import httpx

    from collector.settings import ReceiverSettings

__all__ = ["OUTCOMES", "Delivery", "DeliveryMetrics", "LoadPending", "read_pending"]

log = get_logger("delivery")

LoadPending = Callable[[], Awaitable[list[OutboxEntry]]]
"""Reads the pending outbox rows (the delivery's own read-only connection)."""


def read_pending(db: StoreTarget, token: int | None = None) -> LoadPending:
    """Pending outbox rows read on a connection of the delivery's own, never the writer's;
    with an elected leader's ``token``, only while that term holds the lease (the claim:
    :func:`~collector.store.alerts.pending_outbox`)."""

    async def load() -> list[OutboxEntry]:
        async with Store.open_readonly(db) as store:
            return await pending_outbox(store, token)

    return load


class _Result(NamedTuple):
    status: int | None
    retry_after: str | None
    head: str | None
    error: str | None
    exit_code: int | None = None
    """An ``exec`` receiver's command: its exit status (``status`` is then None)."""


OUTCOMES: Final = ("pending", "delivered", "dead")
"""The ``outcome`` label's values: an outbox row's state after an attempt."""


class DeliveryMetrics:
    """What the webhook delivery counts, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ns = "capwatch_collector"
        self.outcomes = Counter(
            "webhook_outcomes",
            "Webhook delivery outcomes, by outcome (pending: will be retried).",
            ("outcome",),
            namespace=ns,
            registry=registry,
        )
        self.outcome_by: Final = {o: self.outcomes.labels(o) for o in OUTCOMES}
        self.handoff_full = Counter(
            "webhook_handoff_full",
            "Committed notifications not handed over (hand-off full): found by a rescan.",
            namespace=ns,
            registry=registry,
        )
        self.outbox_read_failures = Counter(
            "webhook_outbox_read_failures",
            "Reads of the pending outbox that failed (tried again at the next scan).",
            namespace=ns,
            registry=registry,
        )

    def counter_rows(self) -> dict[str, int]:
        """``webhook_<outcome>``, ``webhook_handoff_full``, ``webhook_outbox_read_failed``."""
        return {
            **{f"webhook_{o}": n for o, n in labelled_values(self.outcomes).items()},
            "webhook_handoff_full": value(self.handoff_full),
            "webhook_outbox_read_failed": value(self.outbox_read_failures),
        }


class Delivery:
    """Sends the outbox to the receivers; see the module docstring.

    ``report`` puts onto the writer's queue (its ``put``). ``poll_s`` bounds how long a
    worker sleeps before it looks at ``clock`` again (tests drive a
    :class:`~shared.clock.FakeClock` with a small one).
    """

    def __init__(
        self,
        receivers: Sequence[ReceiverSettings],
        report: Callable[[OutboxReport], Awaitable[None]],
        clock: Clock,
        *,
        load_pending: LoadPending,
        rescan_s: float = 10.0,
        poll_s: float = 1.0,
        handoff_max: int = 256,
        rng: random.Random | None = None,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self._receivers = list(receivers)
        self._report = report
        self._clock = clock
        self._load_pending = load_pending
        self._rescan_s = rescan_s
        self._poll_s = poll_s
        self._rng = rng or random.Random()
        self.metrics = DeliveryMetrics(CollectorRegistry()) if metrics is None else metrics
        self._handoff: asyncio.Queue[list[OutboxEntry]] = asyncio.Queue(maxsize=handoff_max)
        self._rescan = asyncio.Event()
        self._stop = asyncio.Event()
        self._workers: dict[str, _Worker] = {}
        self._active: dict[int, int] = {}
        """Notifications a worker holds: id -> redeliveries."""
        self._settled: dict[int, int] = {}
        """Reported delivered or dead, maybe not committed yet: a rescan must not revive them."""
        self._outcomes: dict[int, OutboxOutcome] = {}
        self._outcomes_ready = asyncio.Event()

    # -- called by the writer (synchronously, never waits) --------------------------------

    def offer(self, entries: list[OutboxEntry]) -> None:
        """Hand over notifications just committed; if the hand-off is full, rescan instead."""
        if not entries:
            return
        try:
            self._handoff.put_nowait(entries)
        except asyncio.QueueFull:
            self.metrics.handoff_full.inc()
            self._rescan.set()

    def stop(self) -> None:
        """Make :meth:`run` return; requests in flight are abandoned (their rows stay pending)."""
        self._stop.set()

    # -- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until :meth:`stop`."""
        import httpx  # noqa: PLC0415 (~20 ms of imports: only a collector with receivers)

        async with contextlib.AsyncExitStack() as stack:
            for cfg in self._receivers:
                client = None
                if cfg.kind == "webhook":
                    client = await stack.enter_async_context(
                        httpx.AsyncClient(
                            timeout=httpx.Timeout(cfg.timeout_s),
                            limits=httpx.Limits(max_connections=cfg.max_in_flight),
                            follow_redirects=False,
                            trust_env=False,  # settings come from the TOML file, not the env
                        )
                    )
                self._workers[cfg.name] = _Worker(cfg, client, self)
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._dispatch(), name="webhook-dispatch"),
                    tg.create_task(self._reporter(), name="webhook-report"),
                ]
                tasks += [
                    tg.create_task(w.run(), name=f"webhook-{name}")
                    for name, w in self._workers.items()
                ]
                await self._stop.wait()
                for task in tasks:
                    task.cancel()

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        next_scan = loop.time()
        while True:
            if self._rescan.is_set() or loop.time() >= next_scan:
                self._rescan.clear()
                next_scan = loop.time() + self._rescan_s
                try:
                    pending = await self._load_pending()
                except StoreError as exc:
                    # The writer may still be migrating a new file, or the disk is failing
                    # (then the writer stops the collector): try again at the next scan.
                    log.warning("outbox_read_failed", error=str(exc))
                    self.metrics.outbox_read_failures.inc()
                else:
                    self._scan(pending)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_scan - loop.time())):
                    for entry in await self._handoff.get():
                        self._take(entry)

    def _scan(self, pending: list[OutboxEntry]) -> None:
        """Take up pending rows no worker holds: left by a previous run, or redelivered."""
        ids = {e.id for e in pending}
        for gone in [i for i in self._settled if i not in ids]:
            del self._settled[gone]  # its outcome is committed
        for entry in pending:
            self._take(entry)

    def _take(self, entry: OutboxEntry) -> None:
        """Give ``entry`` to its receiver's worker, unless a worker holds it already or its
        outcome is known: a row committed just before a rescan arrives both from the rescan
        and from the hand-off, and must be sent once."""
        if entry.id in self._active or self._settled.get(entry.id) == entry.redeliveries:
            return
        worker = self._workers.get(entry.receiver)
        self._active[entry.id] = entry.redeliveries
        if worker is None:
            self._outcome(
                entry,
                OutboxOutcome(
                    entry.id,
                    "dead",
                    entry.attempts,
                    entry.next_at,
                    None,
                    f"receiver {entry.receiver!r} is not configured any more",
                    None,
                    self._clock.time(),
                ),
            )
            return
        worker.add(entry)

    def _outcome(self, entry: OutboxEntry, outcome: OutboxOutcome) -> None:
        """Queue ``outcome`` for the writer (the latest per notification wins)."""
        self._outcomes[entry.id] = outcome
        self._outcomes_ready.set()
        self.metrics.outcome_by[outcome.state].inc()
        if outcome.state != "pending":
            self._active.pop(entry.id, None)
            self._settled[entry.id] = entry.redeliveries

    async def _reporter(self) -> None:
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready.clear()
            batch, self._outcomes = self._outcomes, {}
            await self._report(OutboxReport(list(batch.values())))


class _Worker:
    """One receiver: its due notifications, at most ``max_in_flight`` requests at a time."""

    def __init__(
        self, cfg: ReceiverSettings, client: httpx.AsyncClient | None, owner: Delivery
    ) -> None:
        self.cfg = cfg
        self._client = client
        self._owner = owner
        self._clock = owner._clock
        self._due: list[tuple[float, int, OutboxEntry]] = []
        self._wake = asyncio.Event()
        self._secret = None if cfg.secret is None else cfg.secret.get_secret_value().encode()

    def add(self, entry: OutboxEntry) -> None:
        heapq.heappush(self._due, (entry.next_at, entry.id, entry))
        self._wake.set()

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.cfg.max_in_flight)
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                while self._due and self._due[0][0] <= self._clock.time():
                    await slots.acquire()
                    entry = heapq.heappop(self._due)[2]
                    tg.create_task(self._attempt(entry, slots), name=f"webhook-{entry.id}")
                wait = self._owner._poll_s
                if self._due:
                    wait = min(wait, max(0.0, self._due[0][0] - self._clock.time()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def _attempt(self, entry: OutboxEntry, slots: asyncio.Semaphore) -> None:
        try:
            outcome = await self._try(entry)
        finally:
            slots.release()
        self._owner._outcome(entry, outcome)
        if outcome.state == "pending":
            self.add(entry._replace(attempts=outcome.attempts, next_at=outcome.next_at))

    async def _try(self, entry: OutboxEntry) -> OutboxOutcome:
        now = self._clock.time()
        if now > entry.expires_at:
            log.warning("webhook_expired", receiver=self.cfg.name, id=entry.id)
            return OutboxOutcome(
                entry.id,
                "dead",
                entry.attempts,
                entry.next_at,
                None,
                f"older than max_age_s ({self.cfg.max_age_s:g} s) after "
                f"{entry.attempts} attempt(s)",
                None,
                now,
            )
        attempts = entry.attempts + 1
        res = await self._send(entry)
        now = self._clock.time()
        if self.cfg.kind == "exec":
            # A command is a transport with one answer: done (0), or try again later.
            verdict = (
                Verdict("delivered")
                if res.exit_code == 0
                else Verdict("retry", backoff_s(attempts, self._owner._rng))
            )
        else:
            verdict = classify(res.status, res.retry_after, attempts, now, self._owner._rng)
        state = verdict.kind
        error = res.error
        if state == "retry" and now + verdict.wait_s > entry.expires_at:
            state = "dead"
            error = f"{error or f'HTTP {res.status}'}; next try would pass max_age_s"
        elif state == "dead" and error is None:
            error = f"HTTP {res.status}: not retried"
        log_event = log.info if state == "delivered" else log.warning
        log_event(
            f"webhook_{state}",
            receiver=self.cfg.name,
            id=entry.id,
            attempts=attempts,
            status=res.status,
            error=error,
            wait_s=round(verdict.wait_s, 3) if state == "retry" else None,
        )
        if state == "retry":
            next_at = now + verdict.wait_s
            return OutboxOutcome(
                entry.id, "pending", attempts, next_at, res.status, error, res.head, None
            )
        return OutboxOutcome(
            entry.id,
            "delivered" if state == "delivered" else "dead",
            attempts,
            entry.next_at,
            res.status,
            error,
            res.head,
            now,
        )

    async def _send(self, entry: OutboxEntry) -> _Result:
        import httpx  # noqa: PLC0415 (loaded by run: a dictionary look-up)

        cfg = self.cfg
        if self._client is None:  # kind = "exec"
            done = await run_action(cfg, entry.body)
            return _Result(None, None, done.head, done.error, done.exit_code)
        body = entry.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "capwatch",
            cfg.idempotency_header: entry.uuid,
        }
        if self._secret is not None:
            ts = str(int(self._clock.time())) if cfg.timestamp_header else None
            if ts is not None:
                headers[cfg.timestamp_header] = ts
            headers[cfg.signature_header] = sign(self._secret, body, ts)
        try:
            # httpx's timeout is per read; this one bounds the whole exchange (a receiver
            # trickling bytes must not hold a slot for ever).
            async with asyncio.timeout(cfg.timeout_s):
                async with self._client.stream(
                    "POST", str(cfg.url), content=body, headers=headers
                ) as resp:
                    head = await answer_head(resp)
                    return _Result(
                        resp.status_code,
                        resp.headers.get("retry-after"),
                        head.decode("utf-8", "replace"),
                        None,
                    )
        except TimeoutError:
            return _Result(None, None, None, f"timed out after {cfg.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return _Result(None, None, None, f"{type(exc).__name__}: {exc}"[:300])
