"""Leader or standby: which of several collectors runs the leader's jobs.

Every collector ingests (its share of the samples, every inventory and status). Only the
leader runs the jobs whose effects must happen once: the alert rules and their
notifications, governance, capacity, webhook delivery, the Alertmanager push. A
:class:`Role` decides which collector that is and runs its ``lead`` coroutine only while
it holds the lease:

- alone (a SQLite store, no election): :class:`Role` with no election leads at once and for
  good (``token`` stays ``None``);
- elected (:class:`~collector.store.leader.LeaderLease`): a standby tries to take the lease
  every ``poll_s``; once it holds it, ``lead(term)`` runs in a task while the lease is
  renewed every ``lease_s / 3``.

Losing the lease stops the jobs at once: the term's :class:`Fence` is closed first (records
still queued for the writer are dropped, nothing more is sent), then the ``lead`` task is
cancelled. The lease is lost when a renewal is refused (another collector took over) or
when the renewals keep failing (PostgreSQL unreachable) until the local deadline: the
time the last successful renewal was *sent* plus what the database said was left, less
``margin_s``. That moment comes, by this process's monotonic clock, before the database
ends the lease by its own, so the old leader has stopped before a new one can start. The
database's fence (:func:`collector.store.leader.check_token` in each state change's
transaction) covers what that reasoning cannot: a process paused past its deadline.

A clean stop (SIGTERM) releases the lease, so a standby takes over at its next try instead
of waiting for the lease to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from collector.ingest.writer import Record
from collector.store.db import Store
from collector.store.leader import Lease
from shared.clock import Clock
from shared.errors import NotLeaderError, StoreError
from shared.logging import get_logger

__all__ = ["Election", "Fence", "FencedRecords", "RecordQueue", "Role", "RoleMetrics"]

log = get_logger("role")


class Election(Protocol):
    """What a :class:`Role` needs of the lease (:class:`~collector.store.leader.LeaderLease`)."""

    async def try_acquire(self, holder: str, ttl_s: float) -> Lease | None: ...

    async def renew(self, lease: Lease) -> Lease | None: ...

    async def release(self, lease: Lease) -> None: ...


@dataclass(slots=True)
class Fence:
    """One term of leadership as the jobs see it: its token, and whether it still holds.

    ``active`` turns false (for good) the moment the term ends; a leader's record checks it
    when the writer is about to write it, and the database's fence checks ``token`` in the
    same transaction (:func:`collector.store.leader.check_token`, with the PostgreSQL store).
    """

    token: int | None
    active: bool = True
    in_store: bool = True
    """Whether the lease row lives in the store's own database (a PostgreSQL store and no
    separate ``election.url``): only then can a store transaction check ``token``."""

    @property
    def store_token(self) -> int | None:
        """The token the store's transactions check (``None``: nothing to check)."""
        return self.token if self.in_store else None


class RoleMetrics:
    """``capwatch_collector_leader`` (0/1), the term's fencing token, terms taken."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge(
            "capwatch_collector_leader",
            "1 while this collector runs the leader's jobs (alerts, governance, capacity, "
            "delivery); 0 while it stands by.",
            registry=registry,
        )
        self.token = Gauge(
            "capwatch_collector_leader_token",
            "Fencing token of this collector's current or last term (0: never elected; a "
            "lone collector on SQLite leads without one).",
            registry=registry,
        )
        self.terms = Counter(
            "capwatch_collector_leader_terms",
            "Terms this collector took (elections won) since it started.",
            registry=registry,
        )
        self.lost = Counter(
            "capwatch_collector_leader_lost",
            "Terms that ended other than by a clean stop (refused renewal, or renewals failing "
            "until the lease's end).",
            registry=registry,
        )


class Role:
    """Runs ``lead`` while this collector leads; see the module docstring."""

    def __init__(
        self,
        holder: str,
        clock: Clock,
        *,
        election: Election | None = None,
        lease_s: float = 10.0,
        poll_s: float = 1.0,
        margin_s: float | None = None,
        metrics: RoleMetrics | None = None,
        lease_in_store: bool = True,
    ) -> None:
        self.holder = holder
        self.lease_in_store = lease_in_store
        """Whether the election's lease row is in the store's database (:attr:`Fence.in_store`)."""
        self._clock = clock
        self._election = election
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.renew_s = lease_s / 3
        self.margin_s = lease_s / 10 if margin_s is None else margin_s
        self.metrics = RoleMetrics(CollectorRegistry()) if metrics is None else metrics
        self.fence: Fence | None = None
        """The current term while leading, else ``None``."""
        self.elected = asyncio.Event()
        """Set while leading (tests and benches wait on it)."""

    @property
    def leading(self) -> bool:
        """Whether this collector runs the leader's jobs now."""
        return self.fence is not None and self.fence.active

    @property
    def elects(self) -> bool:
        """Whether leadership is elected (else this collector always leads)."""
        return self._election is not None

    def describe(self) -> str:
        """One phrase for ``/readyz`` and logs: ``leader (token 7)``, ``standby``."""
        fence = self.fence
        if fence is None or not fence.active:
            return "standby"
        return "leader" if fence.token is None else f"leader (token {fence.token})"

    async def run(
        self, lead: Callable[[Fence], Coroutine[Any, Any, None]], until: asyncio.Event
    ) -> None:
        """Lead whenever elected, until ``until`` is set (then release the lease)."""
        if self._election is None:
            await self._lead_alone(lead, until)
            return
        election = self._election
        failing = 0  # tries in a row that could not reach the election's database
        while not until.is_set():
            sent = self._clock.monotonic()
            try:
                lease = await election.try_acquire(self.holder, self.lease_s)
            except StoreError as exc:
                # Once per outage (a standby tries every poll_s: a tenth of the lease).
                if not failing:
                    log.warning("leader_election_failed", error=str(exc))
                failing += 1
                lease = None
            else:
                if failing:
                    log.info("leader_election_reachable", failed_tries=failing)
                failing = 0
            if lease is None:
                await _wait(until, self.poll_s)
                continue
            await self._term(election, lease, sent, lead, until)

    async def _lead_alone(
        self, lead: Callable[[Fence], Coroutine[Any, Any, None]], until: asyncio.Event
    ) -> None:
        fence = self._begin(None)
        try:
            async with asyncio.TaskGroup() as tg:
                job = tg.create_task(lead(fence), name="leader-jobs")
                await until.wait()
                job.cancel()
        finally:
            self._end(fence)

    async def _term(
        self,
        election: Election,
        lease: Lease,
        sent: float,
        lead: Callable[[Fence], Coroutine[Any, Any, None]],
        until: asyncio.Event,
    ) -> None:
        """One term: ``lead`` runs until the lease is lost or ``until``; then release."""
        fence = self._begin(lease.token)
        log.info("leader_elected", holder=self.holder, token=lease.token)
        lost = False
        try:
            async with asyncio.TaskGroup() as tg:
                job = tg.create_task(lead(fence), name="leader-jobs")
                keep = tg.create_task(self._keep(election, lease, sent, until), name="leader-lease")
                lost = await keep
                self._end(fence)  # before the cancel: nothing queued may be written now
                job.cancel()
        finally:
            self._end(fence)
        if lost:
            self.metrics.lost.inc()
            log.error("leader_lost", holder=self.holder, token=lease.token)
            return
        with contextlib.suppress(StoreError):  # the lease then ends by itself
            await election.release(lease)
        log.info("leader_released", holder=self.holder, token=lease.token)

    async def _keep(
        self, election: Election, lease: Lease, sent: float, until: asyncio.Event
    ) -> bool:
        """Renew ``lease`` until ``until`` (returns False) or until it is lost (True)."""
        mono = self._clock.monotonic
        deadline = sent + lease.remaining_s - self.margin_s
        next_renew = sent + self.renew_s
        while True:
            wait_s = min(next_renew, deadline) - mono()
            if wait_s > 0 and await _wait(until, wait_s):
                return False
            if until.is_set():
                return False
            if mono() >= deadline:
                log.error("leader_lease_expired_locally", holder=self.holder, token=lease.token)
                return True
            sent_now = mono()
            try:
                renewed = await election.renew(lease)
            except StoreError as exc:
                log.warning("leader_renew_failed", error=str(exc), token=lease.token)
                next_renew = mono() + min(self.poll_s, self.renew_s)
                continue
            if renewed is None:
                log.error("leader_renew_refused", holder=self.holder, token=lease.token)
                return True
            lease = renewed
            deadline = sent_now + renewed.remaining_s - self.margin_s
            next_renew = sent_now + self.renew_s

    def _begin(self, token: int | None) -> Fence:
        fence = self.fence = Fence(token, in_store=self.lease_in_store)
        self.metrics.leader.set(1)
        self.metrics.token.set(token or 0)
        self.metrics.terms.inc()
        self.elected.set()
        return fence

    def _end(self, fence: Fence) -> None:
        fence.active = False
        if self.fence is fence:
            self.fence = None
            self.metrics.leader.set(0)
            self.elected.clear()


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s``; whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
    return event.is_set()


class RecordQueue(Protocol):
    """The writer's queue, as far as a term's jobs use it."""

    async def put(self, item: Record, /) -> None: ...


class FencedRecords:
    """The writer's queue as one term's jobs see it: each record they queue is written only
    if the term still holds when the writer comes to it (else it is dropped, as if its
    cycle had not run: an alert record's notifications are then never sent)."""

    def __init__(self, queue: RecordQueue, fence: Fence) -> None:
        self._queue = queue
        self.fence = fence

    async def put(self, record: Record, /) -> None:
        """Queue ``record`` under this term's fence."""
        await self._queue.put(_Fenced(record, self.fence))


@dataclass(slots=True)
class _Fenced:
    record: Record
    fence: Fence

    @property
    def name(self) -> str:
        return self.record.name

    async def write(self, store: Store) -> bool | None:
        if not self.fence.active:
            log.warning("record_dropped_not_leader", job=self.record.name, token=self.fence.token)
            return None
        # Each transaction of the record checks the term's token first, in that transaction
        # (PostgreSQL): a term that ended meanwhile, by the database's clock, rolls it back.
        # A record in parts: each part is fenced, and the parts left after a refusal dropped.
        try:
            with store.fenced(self.fence.store_token):
                return await self.record.write(store)
        except NotLeaderError as exc:
            self.fence.active = False  # the database says so: queue nothing more this term
            log.warning(
                "record_refused_not_leader",
                job=self.record.name,
                token=self.fence.token,
                error=str(exc),
            )
            return None  # the rest of its parts dropped
