"""The capacity job in the writer: one snapshot per cycle, restored after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.simulate import FleetSimulator
from collector.capacity.job import CapacityJob, CapacityState
from collector.capacity.rules import capacity_rules
from collector.evaluate import run_once
from collector.live import LiveView
from collector.settings import CapacitySettings
from collector.store.db import NodeUpdate, Store
from shared.clock import SystemClock
from shared.errors import ConfigError
from shared.schema import encode
from tests.collector.capacity.helpers import filled_view, site_plan


async def test_each_cycle_stores_a_snapshot_and_a_restart_restores_the_history(
    tmp_path: Path,
) -> None:
    """Three cycles, three rows; a new job on the same store takes back draw and picture."""
    db = tmp_path / "c.db"
    view, _ = filled_view(FleetSimulator(10, seed=3), time.time())
    job = CapacityJob(site_plan(), SystemClock())
    async with Store(db) as store:
        for _ in range(3):
            await run_once(job, store, view)
        rows = await store.fetchall("SELECT nodes, it_w FROM capacity_snapshots ORDER BY at")
    assert [r[0] for r in rows] == [10, 10, 10]
    assert job.state.latest.picture is not None
    assert rows[-1][1] == pytest.approx(job.state.latest.picture.it_w)
    assert job.cpu_ms > 0

    again = CapacityJob(site_plan(), SystemClock())
    async with Store(db) as store:
        assert await again.restore(store, window_s=300) == 3
    assert len(again.state.latest.history) == 3
    assert again.state.latest.picture is not None
    assert again.state.latest.picture.nodes == 10
    assert again.state.latest.picture.it_w == pytest.approx(job.state.latest.picture.it_w)


def test_capacity_settings_refuse_unknown_rules_and_critical_below_warning() -> None:
    """Mistakes in [capacity] name the setting."""
    with pytest.raises((ConfigError, ValidationError), match=r"capacity\.disabled"):
        CapacitySettings(disabled=["SitePowerHgh"])
    with pytest.raises((ConfigError, ValidationError), match=r"capacity\.critical_pct"):
        CapacitySettings(warn_pct=95, critical_pct=90)


def test_disabled_capacity_rules_are_left_out() -> None:
    """capacity.disabled removes the named rules only."""
    c = CapacitySettings(disabled=["SiteWorstCaseOverCap"])
    names = [r.name for r in capacity_rules(job_state(), c)]
    assert "SiteWorstCaseOverCap" not in names
    assert "SitePowerHigh" in names


def job_state() -> CapacityState:
    """An empty capacity state."""
    return CapacityState()


async def test_a_restarted_collector_counts_the_nodes_the_store_knows(tmp_path: Path) -> None:
    """After a restart the view is empty and inventories are not resent: nodes known to the
    store count at nameplate, matched by their stored inventory; one that reports again is
    measured and matched through that inventory."""
    db = tmp_path / "c.db"
    now = time.time()
    sim = FleetSimulator(6, seed=4)
    async with Store(db) as store:
        await store.write_batch(
            [],
            [
                NodeUpdate(node, "offline", now, encode(sim.inventory(i, now)), now)
                for i, node in enumerate(sim.node_ids)
            ],
            sim.node_ids,
        )
    view = LiveView()
    job = CapacityJob(site_plan(), SystemClock())
    async with Store(db) as store:
        await job.restore(store, window_s=300)
    p = job.compute(view)
    assert p.nodes == 6
    assert p.unmatched_nodes == 0
    assert p.stale_nodes == 6
    assert p.nodes_w == pytest.approx(6 * 10_200)
    view.on_sample(sim.sample(0, now, 0), now)  # node 0 is back, its inventory not resent
    p = job.compute(view)
    assert p.nodes == 6
    assert p.unmatched_nodes == 0
    assert p.measured_nodes == 1
    assert p.nodes_w < 6 * 10_200
