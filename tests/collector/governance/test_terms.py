"""The governance job across a leader's terms: each term starts from what the store holds
(another leader's usage snapshot included), and a computation that a term's end cancelled
cannot write into the next term's state. On both backends."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.evaluate import run_once
from collector.governance.job import GovernanceJob
from collector.governance.lease import LeaseTerms
from collector.governance.quota import Quota
from collector.live import LiveView
from collector.paths import StoreTarget
from collector.store.command import Command
from collector.store.db import Store
from collector.store.ledger import LEDGER_AT_KEY
from shared.clock import FakeClock
from tests.collector.governance.fleet import inventory, sample

NOON = dt.datetime(2041, 3, 1, 12, 0, tzinfo=dt.UTC)
GPUS = 8
UTIL = 50.0


def _hours(step_s: float) -> float:
    """GPU-hours one evaluation integrates over ``step_s``: 8 GPUs at 50 %."""
    return GPUS * UTIL / 100 * step_s / 3600


def _sampled(live: LiveView, clock: FakeClock) -> LiveView:
    """``live`` with n1's sample announced again now (it stays fresh)."""
    now = clock.time()
    live.on_sample(sample("n1", now, [UTIL] * GPUS, gpu_w=1200, cpu_w=300), now)
    return live


def _fleet(clock: FakeClock) -> LiveView:
    live = LiveView()
    live.on_inventory(inventory("n1", GPUS, 0), clock.time())
    live.on_status("n1", "online", clock.time())
    return _sampled(live, clock)


def _leased(target: StoreTarget | Path, clock: FakeClock) -> None:
    """Tenant a: a daily GPU-hours quota, and lease a1 on n1."""
    with Command(target, now=clock.time()) as tx:
        tx.governance.put_quota("a", "gpu_hours", Quota(100), "day")
        terms = LeaseTerms(start=NOON.date(), duration_days=10)
        tx.governance.add_lease(name="a1", tenant="a", pool=None, nodes=["n1"], terms=terms)


async def _cycles(
    job: GovernanceJob, store: Store, live: LiveView, clock: FakeClock, n: int
) -> None:
    """``n`` evaluations a minute apart (the first at once)."""
    for i in range(n):
        if i:
            clock.advance(60)
        await run_once(job, store, _sampled(live, clock))


def _measured(job: GovernanceJob) -> float:
    return job.view.measured.of("gpu_hours")["a"]


@pytest.mark.parametrize("ledger", [False, True], ids=["rollups-off", "ledger"])
async def test_a_later_term_takes_back_the_other_leaders_gpu_hours(
    store_url: StoreTarget, ledger: bool
) -> None:
    """This collector leads (4 evaluations a minute apart: 3 minutes integrated), another
    one leads next (taking those back, integrating 3 minutes more), then this one again:
    its new term takes back the other's snapshot, 6 minutes. It kept its first term's state
    (the snapshot "already restored") and counted 3 minutes plus one step: the other
    leader's hours were lost (rollups off for good; with the ledger, until its next run)."""
    clock = FakeClock(start_wall=NOON.timestamp())
    live = _fleet(clock)
    here, other = GovernanceJob(clock), GovernanceJob(clock)
    async with Store(store_url) as store:
        _leased(store_url, clock)
        if ledger:  # it ran before this collector's term: the hours since are the integral's
            at = clock.time() - 600
            await store.write_batch([], meta=[(LEDGER_AT_KEY, repr(at))])
        here.new_term()
        await _cycles(here, store, live, clock, 4)
        assert _measured(here) == pytest.approx(_hours(180))
        clock.advance(60)
        other.new_term()  # another collector's term
        await _cycles(other, store, live, clock, 4)
        assert _measured(other) == pytest.approx(_hours(360))
        clock.advance(60)
        here.new_term()
        await _cycles(here, store, live, clock, 1)
        assert _measured(here) == pytest.approx(_hours(360))
        clock.advance(60)
        await _cycles(here, store, live, clock, 1)  # and it goes on from there
    assert _measured(here) == pytest.approx(_hours(420))


class _HeldOnce(concurrent.futures.ThreadPoolExecutor):
    """The event loop's worker threads (``asyncio.to_thread``): each call runs at once in a
    thread of its own, but the first one after :meth:`hold` waits for :attr:`go` before it
    starts. It counts as running from the moment it is submitted, as a call a thread has
    begun: cancelling the task that awaits it does not stop it (nothing stops a thread)."""

    def __init__(self) -> None:
        super().__init__()  # its pool unused: asyncio accepts no other kind of executor
        self.go = threading.Event()
        self.held: threading.Thread | None = None
        self.holding = asyncio.Event()
        """Set once the held call is submitted (on the loop: ``to_thread`` submits there)."""
        self._armed = False

    def hold(self) -> None:
        self._armed = True

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        f: concurrent.futures.Future[Any] = concurrent.futures.Future()
        f.set_running_or_notify_cancel()
        held, self._armed = self._armed, False

        def work() -> None:
            if held:
                self.go.wait()
            try:
                f.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the awaiting task
                f.set_exception(exc)

        thread = threading.Thread(target=work, daemon=True)
        if held:
            self.held = thread
            self.holding.set()
        thread.start()
        return f


async def test_a_cancelled_computation_writes_nothing_into_the_next_term(tmp_path: Path) -> None:
    """Term 1 evaluates, and its next evaluation's usage computation is in its worker thread
    when the term ends (its task cancelled; the thread goes on). Term 2 evaluates, then the
    old computation finishes, then term 2 evaluates again a minute later: it integrated
    that minute alone, and its view stayed its own. The old computation shared the job's
    state: it set the integral's last time back a minute (two minutes integrated, not one),
    and published its view over term 2's."""
    clock = FakeClock(start_wall=NOON.timestamp())
    live = _fleet(clock)
    db = tmp_path / "capwatch.db"
    job = GovernanceJob(clock)
    threads = _HeldOnce()
    asyncio.get_running_loop().set_default_executor(threads)
    async with Store(db) as store:
        _leased(db, clock)
        job.new_term()
        await _cycles(job, store, live, clock, 1)  # the snapshot: 0 GPU-hours
        clock.advance(60)
        threads.hold()
        cancelled = asyncio.create_task(job(store, _sampled(live, clock).snapshot()))
        await threads.holding.wait()  # the usage computation is in its thread
        cancelled.cancel()  # term 1 ends
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        clock.advance(60)
        job.new_term()
        await _cycles(job, store, live, clock, 1)
        term2 = job.view
        threads.go.set()  # term 1's computation finishes
        assert threads.held is not None
        await asyncio.to_thread(threads.held.join)
        assert job.view is term2
        clock.advance(60)
        await _cycles(job, store, live, clock, 1)
    assert _measured(job) == pytest.approx(_hours(60))


async def test_a_later_term_keeps_the_last_good_state_when_the_store_cannot_be_read(
    tmp_path: Path,
) -> None:
    """A new term loads the state again; a row edited by hand makes it unreadable: the
    term goes on with the last good state (lease a1), as one term does (said once)."""
    clock = FakeClock(start_wall=NOON.timestamp())
    live = _fleet(clock)
    db = tmp_path / "capwatch.db"
    job = GovernanceJob(clock)
    async with Store(db) as store:
        _leased(db, clock)
        job.new_term()
        await _cycles(job, store, live, clock, 1)
        with Command(db, now=clock.time()) as tx:
            tx.execute("UPDATE leases SET tz = 'Mars/Olympus'")
            tx.bump_generation()
        job.new_term()
        await _cycles(job, store, live, clock, 2)
    assert (job.loads, job.unreadable) == (2, 1)
    assert [lease.name for lease in job.view.gov.leases] == ["a1"]
