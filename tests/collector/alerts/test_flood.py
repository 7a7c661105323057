"""What one node can make the alert job keep (both backends): samples naming hundreds of new
idle jobs leave no history row; an alert that fires and resolves is recorded; a pending
alert survives a restart and fires on its first clock."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry

from collector.alerts.builtin import builtin_rules
from collector.alerts.evaluator import Evaluator, EvaluatorMetrics
from collector.alerts.job import AlertJob
from collector.alerts.rule import MAX_PER_NODE
from collector.alerts.settings import AlertSettings
from collector.evaluate import run_once
from collector.ingest.validate import Ingestor
from collector.live import LiveView
from collector.paths import StoreTarget
from collector.store.db import Store
from shared.clock import FakeClock
from shared.schema import MAX_JOBS
from shared.topics import sample_topic, status_topic
from tests.helpers import db_rows
from tests.shared.wire_samples import sample_dict, status_dict

NODE = "x1000c0s0b0n0"
T0 = 1_800_000_000.0


class _Node:
    """One node as the collector hears it: its samples through the real validation into
    the live view, the built-in rules evaluated and their record written after each."""

    def __init__(self, store: Store, clock: FakeClock, settings: AlertSettings) -> None:
        self.store, self.clock = store, clock
        self.view = LiveView()
        self.ingestor = Ingestor(clock, live=self.view)
        self.ingestor.handle(status_topic(NODE), json.dumps(status_dict()).encode())
        self.job = self.new_job(settings)
        self.seq = 0

    def new_job(self, settings: AlertSettings) -> AlertJob:
        """A fresh evaluator and job (what a restarted collector builds)."""
        self.registry = CollectorRegistry()
        metrics = EvaluatorMetrics(self.registry)
        return AlertJob(Evaluator(builtin_rules(settings), metrics=metrics), self.clock)

    async def send(self, jobs: list[str], util_pct: float) -> None:
        """A sample whose 8 GPUs, all at ``util_pct``, run ``jobs`` (spread over the GPUs),
        then one evaluation 5 s later."""
        d: dict[str, Any] = sample_dict()
        d["xids"] = []
        d["jobs"] = [{"id": job, "scheduler": "slurm"} for job in jobs]
        per_gpu = -(-len(jobs) // len(d["gpus"]))
        for g in d["gpus"]:
            g["util_pct"] = util_pct
            del g["mig"]
            mine = jobs[g["index"] * per_gpu : (g["index"] + 1) * per_gpu]
            g["processes"] = [
                {"pid": 1000 + i, "used_mem_bytes": 1 << 20, "user": "mallory", "job": job}
                for i, job in enumerate(mine)
            ]
        self.seq += 1
        d["seq"], d["ts"] = self.seq, self.clock.time()
        item = self.ingestor.handle(sample_topic(NODE), json.dumps(d).encode())
        assert type(item).__name__ == "SampleRow", item
        self.clock.advance(5.0)
        await run_once(self.job, self.store, self.view)

    def counted(self, name: str) -> float:
        """The evaluator's counter ``name`` for JobGpuIdle, as /metrics shows it."""
        got = self.registry.get_sample_value(
            f"capwatch_collector_alert_{name}_total", {"alertname": "JobGpuIdle"}
        )
        return 0.0 if got is None else got


def _history(db: StoreTarget) -> list[tuple[str, str, str]]:
    return db_rows(db, "SELECT rule, previous, state FROM alert_history ORDER BY id")


async def test_a_node_naming_new_idle_jobs_every_sample_leaves_no_history(
    store_url: StoreTarget,
) -> None:
    """10 samples, each naming 256 new idle jobs (JobGpuIdle's ``for``: 30 min): nothing
    fired, so nothing in the history; the node holds at most MAX_PER_NODE pending alerts of
    the rule at a time, the rest counted as dropped, those gone counted as cleared."""
    async with Store(store_url) as store:
        node = _Node(store, FakeClock(start_wall=T0), AlertSettings())
        for k in range(10):
            await node.send([f"{k}-{j}" for j in range(MAX_JOBS)], util_pct=0.0)
            now_held = db_rows(store_url, "SELECT count(*) FROM alerts WHERE rule = 'JobGpuIdle'")
            assert now_held[0][0] <= MAX_PER_NODE
        assert _history(store_url) == []
        dropped, cleared = node.counted("instances_dropped"), node.counted("pending_cleared")
        assert dropped >= (MAX_JOBS - MAX_PER_NODE) * 10
        (held,) = db_rows(store_url, "SELECT count(*) FROM alerts WHERE rule = 'JobGpuIdle'")
        assert cleared == MAX_JOBS * 10 - dropped - held[0] > 0


async def test_an_idle_job_that_fires_then_resolves_is_in_the_history(
    store_url: StoreTarget,
) -> None:
    """An idle job held past ``for`` fires, then resolves when busy: the history has the
    firing and the resolution, not the pending start."""
    async with Store(store_url) as store:
        node = _Node(store, FakeClock(start_wall=T0), AlertSettings(job_idle_for_s=60))
        for _ in range(14):  # 70 s idle
            await node.send(["4242"], util_pct=1.0)
        await node.send(["4242"], util_pct=90.0)
    assert _history(store_url) == [
        ("JobGpuIdle", "pending", "firing"),
        ("JobGpuIdle", "firing", "resolved"),
    ]
    (row,) = db_rows(
        store_url, "SELECT starts_at, ends_at FROM alert_history WHERE state = 'resolved'"
    )
    assert row == (T0 + 65.0, T0 + 75.0)


async def test_a_pending_alert_survives_a_restart_and_fires_on_its_first_clock(
    store_url: StoreTarget,
) -> None:
    """Idle 30 s of a 60 s ``for``, then a restart: the new job restores the pending alert
    and it fires 60 s after the condition began, not 60 s after the restart."""
    settings = AlertSettings(job_idle_for_s=60)
    async with Store(store_url) as store:
        clock = FakeClock(start_wall=T0)
        node = _Node(store, clock, settings)
        for _ in range(6):  # evaluated at T0+5 ... T0+30
            await node.send(["4242"], util_pct=1.0)
        assert db_rows(store_url, "SELECT state, active_at FROM alerts") == [("pending", T0 + 5)]
        node.job = node.new_job(settings)  # the restart
        assert await node.job.restore(store, hold_s=0.0) == 1
        for _ in range(7):  # evaluated at T0+35 ... T0+65
            await node.send(["4242"], util_pct=1.0)
    assert _history(store_url) == [("JobGpuIdle", "pending", "firing")]
    assert db_rows(store_url, "SELECT state, active_at, starts_at FROM alerts") == [
        ("firing", T0 + 5, T0 + 65)
    ]


async def test_an_upgrade_drops_the_pending_and_inactive_history_of_earlier_versions(
    store_url: StoreTarget,
) -> None:
    """A store written by an earlier version (history with pending and inactive rows):
    migration 0029 leaves the firing and resolved rows only, and later opens keep them."""
    async with Store(store_url) as store, store.transaction("an earlier version's rows"):
        for i, (previous, state) in enumerate(
            [
                ("inactive", "pending"),
                ("pending", "inactive"),
                ("inactive", "pending"),
                ("pending", "firing"),
                ("firing", "resolved"),
            ]
        ):
            await store.execute(
                "INSERT INTO alert_history (fingerprint, rule, labels, annotations, previous, "
                "state, at) VALUES ('f', 'JobGpuIdle', '{}', '{}', ?, ?, ?)",
                (previous, state, T0 + i),
            )
        await store.execute("DELETE FROM schema_migrations WHERE name = '0029_alert_history_fired'")
    for _ in range(2):
        async with Store(store_url):
            pass
        assert _history(store_url) == [
            ("JobGpuIdle", "pending", "firing"),
            ("JobGpuIdle", "firing", "resolved"),
        ]
