"""The capacity job's draw history across a leader's terms: each take-over restores it
from the store, which already holds what this collector drew in its earlier terms."""

from __future__ import annotations

import time
from pathlib import Path

from agent.simulate import FleetSimulator
from collector.capacity.job import CapacityJob
from collector.evaluate import run_once
from collector.store.db import Store
from shared.clock import SystemClock
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
