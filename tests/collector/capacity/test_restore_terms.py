"""The capacity job's draw history across a leader's terms: each take-over restores it
from the store, which already holds what this collector drew in its earlier terms."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from agent.simulate import FleetSimulator
from collector.capacity.job import CapacityJob
from collector.evaluate import run_once
from collector.store.db import Store
from shared.clock import FakeClock, SystemClock
from tests.collector.capacity.helpers import filled_view, site_plan


async def test_a_later_term_restores_each_point_once_oldest_first(tmp_path: Path) -> None:
    """Term 1 here draws three points; another collector's term draws two; this one's
    next term restores the five. They were appended after the three it held: eight, three
    of them twice, out of order (the rising-draw rule's regression weighed them double)."""
    db = tmp_path / "c.db"
    view, _ = filled_view(FleetSimulator(10, seed=3), time.time())
    here, other = CapacityJob(site_plan(), SystemClock()), CapacityJob(site_plan(), SystemClock())
    async with Store(db) as store:
        await here.restore(store, window_s=300)  # term 1 begins: nothing stored yet
        for _ in range(3):
            await run_once(here, store, view)
        for _ in range(2):  # the other collector's term
            await run_once(other, store, view)
        await here.restore(store, window_s=300)  # this collector's term 2
        stored = await store.fetchall("SELECT at, it_w FROM capacity_snapshots ORDER BY at")
    history = here.state.latest.history
    assert len(history) == 5
    assert list(history) == [(r[0], r[1]) for r in stored]


class _HeldClock(FakeClock):
    """A clock whose first reading, once armed, waits to be released: a cycle's worker
    thread held in mid-computation (it reads the time there)."""

    def __init__(self, start_wall: float) -> None:
        super().__init__(start_wall=start_wall)
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def time(self) -> float:
        if self.armed and not self.entered.is_set():
            self.entered.set()
            self.release.wait(timeout=30)
        return super().time()


async def test_a_cycle_cancelled_at_a_terms_end_publishes_nothing_of_its_own(
    tmp_path: Path,
) -> None:
    """A term's end cancels the capacity cycle, but its worker thread goes on (a thread
    cannot be stopped) while the next term restores and runs its cycles: the thread wrote
    the job's figures (its CPU time) and pruned the known nodes itself when it finished.
    It now computes from what it was handed and the job publishes only after the await: the
    next term's picture and figures stand."""
    db = tmp_path / "c.db"
    now = time.time()
    sim = FleetSimulator(4, seed=5)
    view, _ = filled_view(sim, now)
    clock = _HeldClock(now)
    job = CapacityJob(site_plan(), clock)
    async with Store(db) as store:
        await job.restore(store, window_s=300)  # term 1
        clock.armed = True
        ended = asyncio.create_task(job(store, view.snapshot()))
        assert await asyncio.to_thread(clock.entered.wait, 30)
        ended.cancel()  # term 1 ends; its thread is held in compute
        with pytest.raises(asyncio.CancelledError):
            await ended
        await job.restore(store, window_s=300)  # term 2
        await run_once(job, store, view)
        published, cpu_ms = job.state.latest, job.cpu_ms
    clock.release.set()
    await asyncio.get_running_loop().shutdown_default_executor()  # the held thread is done
    assert job.state.latest is published
    assert job.cpu_ms == cpu_ms
