"""Node facts: one answer per node state, given alike by every consumer.

One node in each state (fresh, stale, offline, never sampled and online within its grace,
never sampled and online past it, never sampled and offline) is written to a real store
file through the collector's writer and fed to a real live view; then the alert rules, the
capacity picture (live and rebuilt from the store), ``collector query``, the inventory
commands, ``/metrics`` and governance usage (the collector's job and ``quota show
--from-store``) must all say the same of each node.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import msgspec
import pytest
from prometheus_client.metrics_core import Metric

from agent.simulate import FleetSimulator
from collector.alerts.builtin import builtin_rules
from collector.capacity.compute import compute_picture
from collector.capacity.fromstore import nodes_from_store
from collector.evaluate import run_once
from collector.governance.fromstore import usages_from_store
from collector.governance.inventory import describe_nodes
from collector.governance.job import GovernanceJob
from collector.ingest.validate import sample_row
from collector.live import LiveView
from collector.metrics import fleet_families
from collector.nodefacts import (
    PowerReading,
    Staleness,
    State,
    agent_restarted,
    gpu_count,
    gpu_power_w,
    hardware,
    measure,
)
from collector.settings import CollectorSettings
from collector.store.db import NodeUpdate, SampleRow, Store
from collector.store.governance import governance
from collector.store.pools import node_records
from collector.store.queries import fleet_summary
from collector.store.reader import StoreReader
from shared.clock import FakeClock
from shared.schema import encode
from shared.settings import load_settings
from tests.collector.capacity.helpers import site_plan
from tests.collector.governance.fleet import cli

STALENESS = Staleness(intervals=3, expected_interval_s=5)
"""Stale after 15 s without a sample; the simulator samples every 5 s."""
KINDS = ("fresh", "stale", "offline", "new", "silent", "gone")
OFFLINE = frozenset({"offline", "gone"})
EXPECTED: dict[str, State] = {
    "fresh": "online",
    "stale": "stale",  # its last sample arrived 60 s ago
    "offline": "offline",  # a fresh sample, then its last will
    "new": "online",  # online 5 s ago, first sample not due yet
    "silent": "stale",  # online 100 s ago and never sampled
    "gone": "offline",  # never sampled, then offline
}


class Fleet:
    """The six nodes, in a store file and a live view, at ``now``."""

    def __init__(self, tmp_path: Path) -> None:
        self.now = float(int(time.time()))
        self.sim = FleetSimulator(len(KINDS), seed=7, interval_s=5)
        self.node = dict(zip(KINDS, self.sim.node_ids, strict=True))
        self.kind = {n: k for k, n in self.node.items()}
        self.db = tmp_path / "capwatch.db"
        self.view = LiveView()

    async def write(self) -> None:
        """Store and feed the same messages: inventories, statuses, samples."""
        now = self.now
        heard = {"fresh": 100, "stale": 100, "offline": 1, "new": 5, "silent": 100, "gone": 30}
        sampled = {"fresh": now - 2, "stale": now - 60, "offline": now - 2}
        updates: list[NodeUpdate] = []
        rows: list[SampleRow] = []
        for i, kind in enumerate(KINDS):
            node = self.node[kind]
            inv_ts = now - heard[kind]  # the status arrives with the inventory
            inv = self.sim.inventory(i, inv_ts)
            self.view.on_inventory(inv, inv_ts)
            if kind in sampled:
                s = self.sim.sample(i, sampled[kind], 1)
                self.view.on_sample(s, sampled[kind])
                rows.append(sample_row(s, encode(s), sampled[kind]))
            status: Literal["online", "offline"] = "offline" if kind in OFFLINE else "online"
            self.view.on_status(node, status, inv_ts)
            updates.append(NodeUpdate(node, status, inv_ts, encode(inv), inv_ts))
        async with Store(self.db) as store:
            await store.write_batch(rows, updates, new_nodes=list(self.node.values()))

    def states(self, names: dict[str, str]) -> dict[str, str]:
        """Node name -> answer, keyed by kind."""
        return {self.kind[n]: s for n, s in names.items()}


@pytest.fixture
async def fleet(tmp_path: Path) -> Fleet:
    """The six nodes, written."""
    f = Fleet(tmp_path)
    await f.write()
    return f


def _gauge(families: list[Metric], name: str) -> dict[tuple[str, ...], float]:
    (family,) = [f for f in families if f.name == name]
    return {tuple(s.labels.values()): s.value for s in family.samples}


async def test_every_consumer_gives_each_node_the_same_state(fleet: Fleet) -> None:
    """Rules, query, inventory, /metrics and capacity (live and from the store) agree."""
    now = fleet.now
    by_kind = {fleet.node[k]: s for k, s in EXPECTED.items()}

    rules = {r.name: r for r in builtin_rules(staleness=STALENESS)}
    stale = {i.labels["node"] for i in rules["NodeStale"].condition(fleet.view, now)}
    offline = {i.labels["node"] for i in rules["NodeOffline"].condition(fleet.view, now)}
    from_rules = {
        n: "stale" if n in stale else "offline" if n in offline else "online" for n in by_kind
    }
    assert fleet.states(from_rules) == EXPECTED

    with StoreReader(fleet.db) as reader:
        summary = fleet_summary(reader, now, staleness=STALENESS)
        inventory = describe_nodes(node_records(reader), now, staleness=STALENESS)
        rebuilt = nodes_from_store(reader)
    assert fleet.states({n["node"]: n["state"] for n in summary["nodes"]}) == EXPECTED
    assert fleet.states({n.node: n.state for n in inventory}) == EXPECTED
    assert fleet.states({st.node: STALENESS.of(st, now) for st in rebuilt}) == EXPECTED

    families = await fleet_families(fleet.view, now, staleness=STALENESS)
    counts = Counter(EXPECTED.values())
    assert _gauge(families, "capwatch_fleet_nodes") == {(s,): counts[s] for s in counts}
    gpus = len(fleet.sim.inventory(0, now).gpus)
    assert _gauge(families, "capwatch_fleet_gpus") == {(): gpus}  # the fresh node only
    assert (summary["nodes_online"], summary["nodes_stale"], summary["nodes_offline"]) == (
        counts["online"],
        counts["stale"],
        counts["offline"],
    )
    assert summary["gpus_online"] == gpus

    cplan = site_plan()
    live = compute_picture(cplan, fleet.view.nodes(), now, staleness=STALENESS, keep_nodes=True)
    stored = compute_picture(cplan, rebuilt, now, staleness=STALENESS, keep_nodes=True)
    not_online = {k for k, s in EXPECTED.items() if s != "online"}
    for p in (live, stored):
        assert {fleet.kind[n] for n in p.stale} == not_online
        assert p.stale_nodes == len(not_online)
        assert (p.measured_nodes, p.unsampled_nodes) == (1, 1)  # fresh; new
        assert p.node_draws is not None
        basis = {fleet.kind[d.node]: d.basis for d in p.node_draws}
        assert (basis["fresh"], basis["new"]) == ("measured", "nameplate")
    assert stored.nodes_w == live.nodes_w


async def test_usage_counts_only_online_sampled_nodes_in_the_collector_and_from_the_store(
    fleet: Fleet,
) -> None:
    """The governance job (live view) and ``quota show --from-store`` measure the fresh
    node alone and hold every node's GPUs."""
    now = fleet.now
    db = str(fleet.db)
    start = (dt.datetime.fromtimestamp(now, dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    code, _, err = cli("lease", "add", "--db", db, "--tenant", "t", "--nodes",
                       ",".join(fleet.node.values()), "--start", start, "--force",
                       "--reason", "test")  # fmt: skip
    assert (code, err) == (0, "")
    job = GovernanceJob(FakeClock(start_wall=now), busy_util_pct=10.0, staleness=STALENESS)
    async with Store(fleet.db) as store:
        await run_once(job, store, fleet.view)
    with StoreReader(fleet.db) as reader:
        gov = reader.run(governance())
        allocated, measured = usages_from_store(
            reader, gov, now, busy_util_pct=10.0, staleness=STALENESS
        )
    assert fleet.states(dict.fromkeys(job.view.measures, "online")) == {"fresh": "online"}
    fresh = fleet.view.get(fleet.node["fresh"])
    assert fresh is not None
    assert fresh.sample is not None
    m = measure(fresh.sample, 10.0)
    assert measured.by_resource["gpus"] == {"t": float(m.busy_gpus)}
    assert measured.by_resource == job.view.measured.by_resource | {
        "gpu_hours": measured.by_resource["gpu_hours"]  # stored samples vs live integration
    }
    assert allocated.by_resource["gpus"] == {"t": 6.0 * 8}
    assert allocated.by_resource == job.view.allocated.by_resource


def test_state_boundaries() -> None:
    """Stale after exactly ``intervals`` x the node's own interval; a node never sampled
    after as many expected intervals from coming online (or its inventory); offline wins."""
    s = Staleness(intervals=3, expected_interval_s=10)
    t = 1_800_000_000.0

    def state(
        status: str | None = "online",
        status_ts: float | None = None,
        inventory_ts: float | None = None,
        received: float | None = None,
        interval_s: float | None = None,
    ) -> State:
        return s.state(
            t,
            status=status,
            status_ts=status_ts,
            inventory_ts=inventory_ts,
            received=received,
            interval_s=interval_s,
        )

    assert state(received=t - 15, interval_s=5) == "online"
    assert state(received=t - 15.1, interval_s=5) == "stale"
    assert state(received=t - 15.1, interval_s=5, status=None) == "stale"
    assert state(received=t, interval_s=5, status="offline") == "offline"
    assert state(status_ts=t - 30) == "online"
    assert state(status_ts=t - 30.1) == "stale"
    assert state(status=None, inventory_ts=t - 1) == "online"  # heard of by its inventory
    assert state(status=None) == "stale"  # known by name alone
    assert state(status="offline", status_ts=t) == "offline"


def test_an_interval_shorter_than_the_evaluation_interval_counts_as_it() -> None:
    """A node claiming 10 ms is stale after 3 x the evaluation interval, not 30 ms; so is
    its power reading, and a node not sampling yet whose expected interval is shorter. The
    collector's settings pass ``alerts.eval_interval_s``."""
    t = 1_800_000_000.0
    for every_s in (1.0, 2.0):
        s = Staleness(intervals=3, expected_interval_s=0.1, min_interval_s=every_s)
        floor = 3 * every_s

        def state(received: float, interval_s: float, s: Staleness = s) -> State:
            return s.state(
                t,
                status="online",
                status_ts=t - 100,
                inventory_ts=None,
                received=received,
                interval_s=interval_s,
            )

        assert state(t - floor, 0.01) == "online"
        assert state(t - floor - 0.01, 0.01) == "stale"
        assert state(t - 15, 5.0) == "online"  # longer intervals are as the node says
        assert state(t - 15.01, 5.0) == "stale"
        assert s.grace_s == floor
        assert s.fresh(PowerReading(500.0, "dcmi", t - floor, 0.01), t)
        assert not s.fresh(PowerReading(500.0, "dcmi", t - floor - 0.01, 0.01), t)
    settings = CollectorSettings.model_validate({"alerts": {"eval_interval_s": 2.0}})
    assert settings.staleness() == Staleness(3, 5, 2.0)


def test_gpu_power_prefers_interval_power_and_sums_are_bounded_by_the_schema() -> None:
    """Interval power over instantaneous; a measure's GPU sum cannot pass 5 kW per GPU."""
    sim = FleetSimulator(1, seed=1)
    s = sim.sample(0, 1_800_000_000.0, 1)
    g = s.gpus[0]
    assert g.power_interval_w is not None
    assert gpu_power_w(g) == g.power_interval_w
    assert gpu_power_w(type(g)(index=0, uuid=g.uuid, power_w=123.0)) == 123.0
    assert gpu_power_w(type(g)(index=0, uuid=g.uuid)) is None
    forged = msgspec.structs.replace(  # built, not decoded: past the schema's bound
        s, cpu_power_w=None, gpus=[msgspec.structs.replace(g, power_interval_w=1e9)]
    )
    assert measure(forged, 10.0).power_w == 5_000.0
    inv = sim.inventory(0, 1_800_000_000.0)
    assert hardware(inv) == (8, sum(x.power_limit_w or 0.0 for x in inv.gpus))


def test_the_old_alerts_stale_intervals_key_is_read_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``alerts.stale_intervals`` alone stands for ``stale_intervals``; with both set, the
    top-level one wins; either way the commands say so on stderr, naming the new key."""
    for name in list(os.environ):
        if name.upper().startswith("CAPWATCH_"):
            monkeypatch.delenv(name)
    config = tmp_path / "c.toml"
    config.write_text("[alerts]\nstale_intervals = 7\n")
    old = load_settings(CollectorSettings, config_file=config)
    assert old.staleness() == Staleness(7, 5)
    (line,) = old.setting_warnings()
    assert "'alerts.stale_intervals' is replaced by the top-level 'stale_intervals'" in line
    code, _, err = cli("rules", "--config", str(config), "--json")
    assert (code, err) == (0, f"warning: {line}\n")
    config.write_text("stale_intervals = 4\n[alerts]\nstale_intervals = 7\n")
    both = load_settings(CollectorSettings, config_file=config)
    assert both.stale_intervals == 4
    assert both.staleness() == Staleness(4, 5)
    (stale,) = [r for r in builtin_rules(both.alerts, both.staleness()) if r.name == "NodeStale"]
    assert "sent no sample for 4 of its sample intervals" in stale.description
    (line,) = both.setting_warnings()
    assert "which is also set and wins (4)" in line
    config.write_text("stale_intervals = 4\n")
    assert load_settings(CollectorSettings, config_file=config).setting_warnings() == []


def test_gpu_count_is_the_inventorys_else_what_the_samples_reported() -> None:
    """A node's GPUs: its inventory's, a GPU-less inventory included; without one the most
    its samples reported; 0 with neither."""
    assert [gpu_count(8, 4), gpu_count(0, 4), gpu_count(None, 4), gpu_count(None, None)] == [
        8,
        0,
        4,
        0,
    ]


def test_a_sample_of_the_run_before_at_or_below_its_seq_is_not_a_restart() -> None:
    """agent_restarted's ``prior``: the run the held one took over from (epoch 7, at seq 3,
    its newest sample stamped 160).
    Its seq 3 stamped after the held run's newest time is a repeat of it; its seq 4, a run
    that goes on; another lower epoch stamped after, a wiped spool: a start."""
    held = (8, 100.0)
    assert agent_restarted(7, 150.0, *held)  # without prior: taken for a start
    assert not agent_restarted(7, 150.0, *held, seq=3, prior=(7, 3, 160.0))
    assert agent_restarted(7, 150.0, *held, seq=4, prior=(7, 3, 160.0))
    assert agent_restarted(0, 150.0, *held, seq=0, prior=(7, 3, 160.0))
    assert agent_restarted(9, 50.0, *held, seq=0, prior=(7, 3, 160.0))
    assert not agent_restarted(9, 50.0, *held, seq=2, prior=(9, 5, 60.0))  # wiped: 9 came before


def test_the_first_epoch_numbered_again_after_the_run_before_is_a_start() -> None:
    """A wiped spool counts epoch 0 from seq 0 again: when the run the held one took over
    from was epoch 0 too, its epoch and seq match ``prior``, but it is stamped after that
    run's newest time (``prior``'s third figure): a start, not a repeat."""
    held = (1, 200.0)
    assert agent_restarted(0, 300.0, *held, seq=0, prior=(0, 1000, 150.0))
    assert not agent_restarted(0, 140.0, *held, seq=999, prior=(0, 1000, 150.0))
