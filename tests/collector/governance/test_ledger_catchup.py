"""The usage ledger after an outage (every hour caught up, a run at a time), and the GPUs of
a node with no inventory hour by hour (both backends)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

from agent.simulate import FleetSimulator
from collector.evaluate import Progressing
from collector.governance.billing import node_gpus
from collector.governance.ledger import LedgerJob, LedgerRecord
from collector.ingest.validate import sample_row
from collector.live import LiveView
from collector.paths import StoreTarget
from collector.store.db import Store
from collector.store.governance import governance
from collector.store.ledger import GpuHistory
from collector.store.reader import StoreReader
from collector.store.rollups import RollupConfig
from shared.clock import FakeClock
from shared.schema import encode
from tests.collector.governance.test_ledger import DAY0, GPUS, KEEP_S, _lease, _sampled
from tests.helpers import assert_daily_is_the_hours_summed, db_rows

NORMAL_S = 300.0
CATCH_UP_S = 5.0
H = 3600


def _job(db: StoreTarget, clock: FakeClock, **kw: Any) -> LedgerJob:
    """The ledger's job on ``db``'s leases as they are now."""
    with StoreReader(db) as reader:
        gov = reader.run(governance())
    return LedgerJob(
        clock,
        interval_s=NORMAL_S,
        catch_up_s=CATCH_UP_S,
        governance=lambda: gov,
        **{"retention_s": KEEP_S, **kw},
    )


async def _run(db: StoreTarget, job: LedgerJob, *, write: bool = True) -> LedgerRecord | None:
    """One run of ``job`` on a read-only connection, its record written whole (``write``)."""
    async with Store.open_readonly(db) as reads:
        record = await job(reads, LiveView())
    if record is not None and write:
        async with Store(db) as store:
            while await record.write(store):
                pass
    return record


def _ledger_at(db: StoreTarget) -> float | None:
    rows = db_rows(db, "SELECT value FROM meta WHERE key = 'ledger_at'")
    return float(rows[0][0]) if rows else None


async def _catch_up(db: StoreTarget, job: LedgerJob) -> list[float | None]:
    """Run ``job`` as the evaluator would while it says it is behind (its next run due in
    seconds), each record written; the ledger's time after each run."""
    times = []
    for _ in range(20):
        await _run(db, job)
        times.append(_ledger_at(db))
        if job.interval_s == NORMAL_S:
            return times
        assert job.interval_s == CATCH_UP_S
    raise AssertionError(f"not caught up after 20 runs: {times}")


async def test_a_five_day_outage_loses_no_hour_of_a_lease(store_url: StoreTarget) -> None:
    """The collector down five days; the leased nodes' spools replay their next 60 hours
    (all marked, more than a run's 48), then they were silent. Run again every few seconds,
    48 hours at a time, the job writes every hour of the lease with its allocated GPU-hours,
    the ledger's time moves only through the hours written, and the totals add up."""
    sim = FleetSimulator(2, gpus_per_node=GPUS, seed=12, interval_s=600)
    n0, n1 = sim.node_ids
    await _sampled(store_url, sim, [DAY0 + H * h for h in range(6)], nodes=2)
    _lease(store_url, DAY0, "acme-1", [n0, n1], dt.date(2026, 11, 10), days=10)
    clock = FakeClock(start_wall=DAY0 + 6 * H)
    job = _job(store_url, clock)
    assert await _catch_up(store_url, job) == [DAY0 + 6 * H]

    clock.advance(5 * 86_400 + 1800)
    await _sampled(store_url, sim, [DAY0 + H * h for h in range(6, 66)], nodes=2)
    times = await _catch_up(store_url, job)
    now = clock.time()
    assert len(times) == 3  # 121 hours, 48 a run
    assert times[-1] == now
    assert times == [DAY0 + 54 * H, DAY0 + 102 * H, now]  # each the end of an hour written

    got = db_rows(
        store_url,
        "SELECT hour, sum(allocated_gpu_h), sum(reported_gpu_h) FROM usage_ledger "
        "WHERE lease = 'acme-1' GROUP BY hour ORDER BY hour",
    )
    last = int(now) // H * H
    assert [r[0] for r in got] == list(range(int(DAY0), last + 1, H))
    for hour, allocated, reported in got:
        held = (now - hour) / H if hour == last else 1.0
        assert allocated == pytest.approx(2 * GPUS * held)
        assert (reported > 0) == (hour < DAY0 + 66 * H), hour
    ((total,),) = db_rows(store_url, "SELECT sum(allocated_gpu_h) FROM usage_daily")
    assert total == pytest.approx(2 * GPUS * (now - DAY0) / H)
    assert_daily_is_the_hours_summed(store_url)
    assert db_rows(store_url, "SELECT count(*) FROM ledger_dirty") == [(0,)]


async def _ten_hours_behind(store_url: StoreTarget) -> tuple[LedgerJob, FakeClock]:
    """A leased 1-node store caught up to its first hour, then the clock 10 hours on: a
    job of 4 hours a run with hours left to do."""
    sim = FleetSimulator(1, gpus_per_node=GPUS, seed=14, interval_s=600)
    await _sampled(store_url, sim, [DAY0], nodes=1)
    _lease(store_url, DAY0, "acme-1", sim.node_ids, dt.date(2026, 11, 10), days=2)
    clock = FakeClock(start_wall=DAY0 + H)
    job = _job(store_url, clock, max_hours=4)
    await _catch_up(store_url, job)
    clock.advance(10 * H)
    return job, clock


async def test_while_behind_the_next_run_waits_only_for_its_record(
    store_url: StoreTarget,
) -> None:
    """Hours left to do: the next run is due in seconds, and one that comes while the last
    record is still being written computes nothing (it would compute the same hours again),
    unless the writer has had it a whole interval (it dropped it: computed again)."""
    job, clock = await _ten_hours_behind(store_url)

    first = await _run(store_url, job, write=False)
    assert first is not None
    assert job.interval_s == CATCH_UP_S
    assert sorted({p.hour for p in first.parts}) == [DAY0 + H * h for h in range(1, 5)]
    assert await _run(store_url, job) is None
    assert job.interval_s == CATCH_UP_S
    async with Store(store_url) as store:
        assert await first.write(store)  # one part of several
    assert await _run(store_url, job) is None
    async with Store(store_url) as store:
        while await first.write(store):
            pass
    assert _ledger_at(store_url) == DAY0 + 5 * H

    second = await _run(store_url, job, write=False)
    assert second is not None
    assert sorted({p.hour for p in second.parts}) == [DAY0 + H * h for h in range(5, 9)]
    clock.advance(NORMAL_S)
    third = await _run(store_url, job)
    assert third is not None
    assert [p.rows for p in third.parts] == [p.rows for p in second.parts]


async def test_a_new_term_does_not_wait_for_the_last_terms_record(
    store_url: StoreTarget,
) -> None:
    """A term that ended with hours left to do ends with its record unwritten (the writer
    of that term is gone): the next term's first run waited for it a whole interval,
    computing nothing, as if that record were still being written. Each term starts
    afresh (:meth:`LedgerJob.new_term`), as a new process does: it computes the hours at
    once, from the ledger's time in the store."""
    job, _ = await _ten_hours_behind(store_url)
    last_term = await _run(store_url, job, write=False)
    assert last_term is not None
    assert job.interval_s == CATCH_UP_S

    job.new_term()
    again = await _run(store_url, job)
    assert again is not None
    assert [p.rows for p in again.parts] == [p.rows for p in last_term.parts]
    assert _ledger_at(store_url) == DAY0 + 5 * H


async def test_a_new_terms_first_run_comes_as_soon_as_a_new_processs(
    store_url: StoreTarget,
) -> None:
    """A term's evaluator waits the job's ``interval_s`` before its first run: a new
    process's ledger runs after ``first_interval_s`` (soon: the hours an outage or the last
    leader's end left dirty), and so does a later term's (:meth:`LedgerJob.new_term`), not
    after the interval the last term's last run left (5 minutes by default)."""
    sim = FleetSimulator(1, gpus_per_node=GPUS, seed=14, interval_s=600)
    await _sampled(store_url, sim, [DAY0], nodes=1)
    _lease(store_url, DAY0, "acme-1", sim.node_ids, dt.date(2026, 11, 10), days=2)
    job = _job(store_url, FakeClock(start_wall=DAY0 + H), first_interval_s=10.0)
    assert job.interval_s == 10.0
    await _catch_up(store_url, job)
    assert job.interval_s == NORMAL_S
    job.new_term()
    assert job.interval_s == 10.0


async def test_hours_marked_again_before_every_run_do_not_hold_the_ledger_back(
    store_url: StoreTarget,
) -> None:
    """A node whose late samples land in four old hours before every run (a run computes
    four hours at most here, 48 by default; a node may stamp a sample as old as the raw
    samples' retention): every run still brings the ledger's time to now, each of the
    marked hours is recomputed within two runs, and the next run is not hurried for them (it
    comes after the usual interval)."""
    sim = FleetSimulator(1, gpus_per_node=GPUS, seed=17, interval_s=600)
    old = [DAY0 + H * h for h in range(1, 5)]
    await _sampled(store_url, sim, [DAY0, *old], nodes=1)
    _lease(store_url, DAY0, "acme-1", sim.node_ids, dt.date(2026, 11, 10), days=10)
    clock = FakeClock(start_wall=DAY0 + 10 * H + 600)
    job = _job(store_url, clock, max_hours=4)
    await _catch_up(store_url, job)
    turns: list[set[int]] = []
    for run in range(1, 5):
        clock.advance(H)
        await _sampled(store_url, sim, old, nodes=1, offset_s=run)  # marks the 4 again
        await _run(store_url, job)
        assert _ledger_at(store_url) == clock.time(), f"run {run}"
        computed = {
            h
            for (h,) in db_rows(
                store_url, "SELECT hour FROM usage_ledger WHERE computed = ?", (clock.time(),)
            )
        }
        assert len(computed) == 4, computed  # the two hours since the last run, two marked
        assert job.interval_s == NORMAL_S
        turns.append(computed & set(old))
    assert turns[0] | turns[1] == turns[2] | turns[3] == set(old)
    clock.advance(NORMAL_S)
    await _run(store_url, job)
    assert db_rows(store_url, "SELECT count(*) FROM ledger_dirty") == [(0,)]
    assert_daily_is_the_hours_summed(store_url)


async def test_a_catch_up_goes_back_only_as_far_as_the_hourly_rollups(
    store_url: StoreTarget,
) -> None:
    """The ledger's time five days old, the 1-hour rollups kept two days: the catch-up
    begins at the oldest hour they still hold, not at the ledger's time, nor at the hour
    before it, which began more than two days ago and which retention deletes (with its
    ledger hour)."""
    sim = FleetSimulator(1, gpus_per_node=GPUS, seed=15, interval_s=600)
    await _sampled(store_url, sim, [DAY0], nodes=1)
    _lease(store_url, DAY0, "acme-1", sim.node_ids, dt.date(2026, 11, 10), days=10)
    clock = FakeClock(start_wall=DAY0 + H)
    await _catch_up(store_url, _job(store_url, clock))
    clock.advance(5 * 86_400 + 1800)
    await _catch_up(store_url, _job(store_url, clock, retention_s=2 * 86_400, max_hours=200))
    now = clock.time()
    ((oldest, hours),) = db_rows(
        store_url, "SELECT min(hour), count(*) FROM usage_ledger WHERE computed = ?", (now,)
    )
    assert oldest == (int(now) - 2 * 86_400) // H * H + H  # now is half past an hour
    assert hours == 48
    assert _ledger_at(store_url) == now


async def test_a_ledger_time_ahead_of_the_clock_starts_again_from_now(
    store_url: StoreTarget,
) -> None:
    """The ledger's time a day ahead (the clock set back since): the run computes the
    current hour and records now, rather than waiting a day for the clock to catch up."""
    sim = FleetSimulator(1, gpus_per_node=GPUS, seed=16, interval_s=600)
    await _sampled(store_url, sim, [DAY0], nodes=1)
    _lease(store_url, DAY0, "acme-1", sim.node_ids, dt.date(2026, 11, 10), days=10)
    clock = FakeClock(start_wall=DAY0 + 86_400)
    await _catch_up(store_url, _job(store_url, clock))
    clock = FakeClock(start_wall=DAY0 + 2 * H + 600)
    await _catch_up(store_url, _job(store_url, clock))
    assert _ledger_at(store_url) == DAY0 + 2 * H + 600
    ((held,),) = db_rows(
        store_url, "SELECT held_h FROM usage_ledger WHERE hour = ?", (int(DAY0) + 2 * H,)
    )
    assert held == pytest.approx(600 / H)


async def test_a_node_without_inventory_is_billed_the_gpus_it_reported_then(
    store_url: StoreTarget,
) -> None:
    """A node with no inventory reports 8 GPUs for three days (from 02:00 on, silent
    20:00-02:00 on the first night), and once 64 at 12:00 on the third (one hostile
    sample): that hour counts 64 and no other, in the ledger (its hours recomputed after
    the 64 too) and in the bill; the hours before its first report count its first (8),
    its silent hours its last before them (8)."""
    sim = FleetSimulator(1, gpus_per_node=8, seed=13, interval_s=600)
    hostile = FleetSimulator(1, gpus_per_node=64, seed=13, interval_s=600)
    (node,) = sim.node_ids
    assert hostile.node_ids == [node]
    async with Store(store_url):
        pass
    _lease(store_url, DAY0, "acme-1", [node], dt.date(2026, 11, 10), days=3)
    clock = FakeClock(start_wall=DAY0)
    job = _job(store_url, clock)
    await _catch_up(store_url, job)
    reported = [h for h in range(2, 72) if not 20 <= h < 26]
    await _sampled(
        store_url, sim, [DAY0 + H * h for h in reported if h < 48], nodes=1, inventories=False
    )
    clock.advance(48 * H)
    await _catch_up(store_url, job)  # hours 0-47 before the 64

    await _sampled(
        store_url, sim, [DAY0 + H * h for h in reported if h >= 48], nodes=1, inventories=False
    )
    s = hostile.sample(0, DAY0 + 60 * H + 300, 10**6)
    async with Store(store_url, rollups=RollupConfig()) as store:
        await store.write_batch([sample_row(s, encode(s), s.ts + 1)], (), [node])
        await store.fold_rollups()
        async with store.transaction("marking the first two days dirty"):
            for h in range(48):
                await store.execute(
                    "INSERT INTO ledger_dirty (hour, n) VALUES (?, 1) ON CONFLICT (hour) "
                    "DO UPDATE SET n = ledger_dirty.n + 1",
                    (int(DAY0) + h * H,),
                )
    clock.advance(24 * H)
    await _catch_up(store_url, job)

    got = db_rows(
        store_url,
        "SELECT hour, gpus, allocated_gpu_h FROM usage_ledger WHERE lease = 'acme-1' ORDER BY hour",
    )
    assert [r[0] for r in got] == [int(DAY0) + h * H for h in range(72)]
    assert [r[1] for r in got] == [64 if r[0] == DAY0 + 60 * H else 8 for r in got]
    assert [r[2] for r in got] == [pytest.approx(r[1]) for r in got]
    assert_daily_is_the_hours_summed(store_url)

    from collector.cli.usage import read_days  # noqa: PLC0415

    with StoreReader(store_url) as reader:
        days = read_days(reader, DAY0, DAY0 + 4 * 86_400, tenant="acme", now=DAY0 + 3 * 86_400)
    assert sum(d["allocated_gpu_hours"] for d in days) == pytest.approx(71 * 8 + 64)
    with StoreReader(store_url) as reader:  # a bill of the first day alone: its own hours
        days = read_days(reader, DAY0, DAY0 + 86_400, tenant="acme", now=DAY0 + 3 * 86_400)
    assert sum(d["allocated_gpu_hours"] for d in days) == pytest.approx(24 * 8)


def test_gpu_history_counts_each_hour_its_own_and_a_silent_one_its_last_before() -> None:
    """Reports at 02:00 (8), 05:00 (64, and 8 from the other source: the most counts),
    06:00 (8): before 02:00 the first (8); 03:00-04:59 the last before (8); 05:00 64; a
    node with an inventory counts it all along, one that never reported none (0 GPUs)."""
    h0 = int(DAY0)
    reports = [(2 * H, 8), (5 * H + 10, 64), (5 * H, 8), (6 * H, 8), (7 * H, None)]
    history = GpuHistory([("n", h0 + t, n) for t, n in reports])
    assert [history.at("n", h0 + h * H) for h in range(9)] == [8, 8, 8, 8, 8, 64, 8, 8, 8]
    assert history.at("n", h0 + 5 * H + 3599) == 64
    assert history.at("m", h0) is None
    assert history.at_hour(h0 + 5 * H) == {"n": 64}
    assert history.spans("n", h0, h0 + 10 * H) == [
        (h0, h0 + 5 * H, 8),
        (h0 + 5 * H, h0 + 6 * H, 64),
        (h0 + 6 * H, h0 + 10 * H, 8),
    ]
    assert node_gpus("n", {}, history, h0 + 1800, h0 + 5.5 * H) == [
        (h0 + 1800, h0 + 5 * H, 8),
        (h0 + 5 * H, h0 + 5.5 * H, 64),
    ]
    assert node_gpus("n", {"n": 4}, history, h0, h0 + 10 * H) == [(h0, h0 + 10 * H, 4)]
    assert node_gpus("m", {}, history, h0, h0 + H) == [(h0, h0 + H, 0)]


async def test_a_cancelled_runs_thread_stops_at_the_next_hour(store_url: StoreTarget) -> None:
    """The rows are made in a worker thread, which goes on after the job's await is
    cancelled (a collector stopping), and the process's exit waits for it: once told to
    stop it makes no further hour, so a catch-up of 48 hours does not hold the stop."""
    sim = FleetSimulator(1, gpus_per_node=GPUS, seed=15, interval_s=600)
    await _sampled(store_url, sim, [DAY0], nodes=1)
    _lease(store_url, DAY0, "acme-1", sim.node_ids, dt.date(2026, 11, 10), days=2)
    job = _job(store_url, FakeClock(start_wall=DAY0 + H))
    gov = job._governance()
    hours = [int(DAY0) + H * h for h in range(6)]
    stop = threading.Event()
    with StoreReader(store_url) as reader:
        made = job._rows(reader, hours, gov, DAY0 + 7 * H, stop)
        assert {r.hour for r in made} == set(hours)
        stop.set()
        assert job._rows(reader, hours, gov, DAY0 + 7 * H, stop) == []


class _SlowClock(FakeClock):
    """A machine where every look at the monotonic clock finds 2 s gone: each hour a run
    computes takes a while, as at 12,500 nodes."""

    def monotonic(self) -> float:
        self.advance(2.0)
        return super().monotonic()


async def test_a_catch_up_run_says_it_progresses_hour_by_hour(store_url: StoreTarget) -> None:
    """The evaluator judges a long run from its last progress (collector.evaluate's
    Progressing): the ledger stamps it as it reads and as it computes each hour, so a run
    of 48 hours that lasts minutes is busy, not stuck, from /readyz's point of view."""
    sim = FleetSimulator(1, gpus_per_node=GPUS, seed=13, interval_s=600)
    await _sampled(store_url, sim, [DAY0 + H * h for h in range(2)], nodes=1)
    _lease(store_url, DAY0, "acme-1", sim.node_ids, dt.date(2026, 11, 10), days=10)
    clock = _SlowClock(start_wall=DAY0 + 2 * H)
    job = _job(store_url, clock)
    assert isinstance(job, Progressing)
    await _catch_up(store_url, job)
    clock.advance(3 * 86_400)
    started = clock.monotonic()
    await _run(store_url, job)
    assert job.interval_s == CATCH_UP_S  # 72 hours behind: 48 this run
    assert job.progressed_at is not None
    assert job.progressed_at - started >= 48 * 2.0  # a stamp per hour, the last one's late
