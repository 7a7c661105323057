"""The collector's metric families: fleet aggregates from the live view, alert counts, the
components' typed counters; no per-node or per-GPU series whatever the fleet size."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from agent.simulate import FleetSimulator
from collector.alerts.evaluator import AlertState
from collector.health import Health
from collector.ingest.metrics import REJECT_REASONS
from collector.ingest.writer import Writer, WriterItem
from collector.live import LiveView
from collector.localpg import LocalPostgres
from collector.metrics import alert_families, fleet_families
from collector.nodefacts import Staleness
from collector.paths import parse_target
from collector.service import Collector as CapwatchCollector
from collector.settings import CollectorSettings
from collector.store.db import Store
from shared.topics import sample_topic
from tests.helpers import promtool_check_metrics

NOW = 1_700_000_000.0


def _values(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def _view(nodes: int = 6) -> tuple[LiveView, FleetSimulator]:
    """``nodes`` simulated 8-GPU nodes: 0-3 online (fresh samples), 4 stale, 5 offline."""
    sim = FleetSimulator(nodes, gpus_per_node=8, seed=5, interval_s=5)
    view = LiveView()
    for i in range(nodes):
        received = NOW - 1 if i != 4 else NOW - 60  # node 4: 12 intervals ago, stale
        view.on_sample(sim.sample(i, received, 0), received)
        view.on_status(sim.node_ids[i], "offline" if i == 5 else "online", received)
    view.on_reject("forged-name", "invalid", NOW)  # known only from rejects: not a node
    return view, sim


async def test_fleet_aggregates_equal_the_sums_over_online_nodes() -> None:
    """Nodes by state as `collector query` counts them; GPUs, mean utilisation and power
    summed over the online nodes only, recomputed here from the samples themselves."""
    view, _ = _view()
    got = _values(await fleet_families(view, NOW, staleness=Staleness(3, 5), chunk=4))
    online = [st.sample for st in list(view.nodes())[:4] if st.sample is not None]
    gpus = [g for sample in online for g in sample.gpus]
    power = sum(
        g.power_interval_w if g.power_interval_w is not None else g.power_w or 0 for g in gpus
    )
    cpu = sum(sample.cpu_power_w or 0.0 for sample in online)
    util = [g.util_pct for g in gpus if g.util_pct is not None]
    assert got[("capwatch_fleet_nodes", (("state", "online"),))] == 4
    assert got[("capwatch_fleet_nodes", (("state", "stale"),))] == 1
    assert got[("capwatch_fleet_nodes", (("state", "offline"),))] == 1
    assert got[("capwatch_fleet_gpus", ())] == 32
    assert got[("capwatch_fleet_gpu_power_watts", ())] == pytest.approx(power)
    assert power > 1000  # real readings, not zeros
    assert got[("capwatch_fleet_gpu_utilisation_ratio", ())] == pytest.approx(
        sum(util) / len(util) / 100
    )
    assert got[("capwatch_fleet_node_power_watts", ())] == pytest.approx(power + cpu)
    assert got[("capwatch_fleet_live_nodes", ())] == 7  # the view holds the forged name too


async def test_chunked_walk_gives_the_same_figures_as_one_pass() -> None:
    """Yielding to the loop between chunks changes nothing in the result."""
    view, _ = _view(9)
    one = _values(await fleet_families(view, NOW, staleness=Staleness(3, 5), chunk=10**6))
    many = _values(await fleet_families(view, NOW, staleness=Staleness(3, 5), chunk=1))
    assert one == many


async def test_unknown_power_is_absent_not_zero() -> None:
    """Online GPUs that report no power give no power series (unknown is not 0 W)."""
    sim = FleetSimulator(1, gpus_per_node=2, seed=1, interval_s=5)
    sample = sim.sample(0, NOW, 0)
    blind = msgspec.structs.replace(
        sample,
        cpu_power_w=None,
        gpus=[msgspec.structs.replace(g, power_w=None, power_interval_w=None) for g in sample.gpus],
    )
    view = LiveView()
    view.on_sample(blind, NOW)
    got = _values(await fleet_families(view, NOW, staleness=Staleness(3, 5)))
    assert got[("capwatch_fleet_gpus", ())] == 2
    assert not any(name.endswith("_watts") for name, _ in got)


async def test_samples_of_a_second_agent_are_counted_for_the_fleet() -> None:
    """Two agents (epochs 3 and 0) publishing as one node, ten samples each, alternating:
    each after the first switch shows the second agent; other nodes add nothing."""
    view, sim = _view()
    node = sim.sample(0, NOW, 0)
    for k in range(10):
        for epoch, at in ((3, NOW + 5 * k), (0, NOW + 5 * k + 2)):
            view.on_sample(msgspec.structs.replace(node, epoch=epoch, seq=k, ts=at), at)
    got = _values(await fleet_families(view, NOW + 50, staleness=Staleness(3, 5)))
    assert got[("capwatch_fleet_agent_conflicts_total", ())] == 2 * 10 - 2


async def test_series_count_does_not_grow_with_the_fleet() -> None:
    """No per-node or per-GPU series: 3 nodes and 300 nodes give the same series."""
    small, _ = _view(3)
    big, _ = _view(300)
    a = await fleet_families(small, NOW, staleness=Staleness(3, 5))
    b = await fleet_families(big, NOW, staleness=Staleness(3, 5))
    assert set(_values(a)) == set(_values(b))


def _alert(state: str, severity: str, n: int) -> AlertState:
    return AlertState(
        rule="R", labels={"severity": severity, "n": str(n)}, fingerprint=str(n), state=state,  # type: ignore[arg-type]
        active_at=NOW,
    )  # fmt: skip


def test_alerts_are_counted_by_state_and_severity_with_zeros() -> None:
    """Every (state, severity) pair is present; counts match the states given."""
    states = [
        _alert("firing", "critical", 1),
        _alert("firing", "critical", 2),
        _alert("pending", "warning", 3),
        _alert("firing", "info", 4),
    ]
    got = _values(alert_families(states))
    assert len(got) == 6
    assert got[("capwatch_alerts", (("severity", "critical"), ("state", "firing")))] == 2
    assert got[("capwatch_alerts", (("severity", "warning"), ("state", "pending")))] == 1
    assert got[("capwatch_alerts", (("severity", "info"), ("state", "firing")))] == 1
    assert got[("capwatch_alerts", (("severity", "warning"), ("state", "firing")))] == 0


def _collector(tmp_path: Path) -> CapwatchCollector:
    return CapwatchCollector(CollectorSettings(db_path=tmp_path / "c.db"))


def test_counters_are_typed_families_with_bounded_labels(tmp_path: Path) -> None:
    """Each component's counters are named families on the collector's one registry; a
    reject reason outside the fixed set (a bug) counts as "other", never as a new label
    value; there is no catch-all events family; the counters table reads the same values."""
    collector = _collector(tmp_path)
    ingest = collector.ingestor
    ingest.handle(sample_topic("n1"), b"][")
    ingest.handle("capwatch/v1/nodes/n1/bogus", b"{}")
    ingest.reject("made_up_by_a_bug", sample_topic("n1"), b"x", "?")
    collector.writer_metrics.stored.inc(7)
    collector.writer_metrics.job_failures.labels("alerts").inc()
    collector.delivery_metrics.outcome_by["delivered"].inc(4)
    text = generate_latest(collector.registry).decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    rejected = "capwatch_collector_messages_rejected_total"
    assert got[(rejected, (("reason", "not_json"),))] == 1
    assert got[(rejected, (("reason", "bad_topic"),))] == 1
    assert got[(rejected, (("reason", "other"),))] == 1
    reasons = {dict(labels)["reason"] for name, labels in got if name == rejected}
    assert reasons == {*REJECT_REASONS, "other"}
    assert got[("capwatch_collector_messages_received_total", ())] == 2
    assert got[("capwatch_collector_samples_stored_total", ())] == 7
    assert got[("capwatch_collector_job_failures_total", (("job", "alerts"),))] == 1
    assert got[("capwatch_collector_webhook_outcomes_total", (("outcome", "delivered"),))] == 4
    assert not any(name.startswith("capwatch_collector_events") for name, _ in got)
    table = collector.counter_values()
    assert (table["received"], table["rejected"], table["rejected_not_json"]) == (2, 3, 1)
    assert (table["stored"], table["job_failed_alerts"], table["webhook_delivered"]) == (7, 1, 4)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def test_promtool_accepts_the_collector_families_without_remarks(tmp_path: Path) -> None:
    """The collector's families (no inherited names) pass promtool with no lint remark."""
    view, _ = _view()
    collector = _collector(tmp_path)
    queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=16)
    writer = Writer(Store(tmp_path / "c.db"), queue, collector.ingestor, collector.clock)
    health = Health(
        collector.clock, limit_s=30, connected=collector.connected, writer=writer, queue=queue
    )
    families = [
        *health.families(),
        *await fleet_families(view, NOW, staleness=Staleness(3, 5)),
        *alert_families([]),
    ]
    registry = collector.registry  # every component's counters, the process collector
    registry.register(_Families(families))
    rc, problems = promtool_check_metrics(generate_latest(registry).decode())
    assert (rc, problems) == (0, [])


def test_a_stalled_loop_gets_the_previous_snapshot_and_counts_it() -> None:
    """A scrape while the event loop is blocked returns in ~timeout with the last families
    and a timeout count, instead of hanging the scraper (or the loop)."""
    import threading  # noqa: PLC0415

    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

    from collector.metrics import LoopSnapshot  # noqa: PLC0415

    calls = [0]

    async def snapshot() -> list[Metric]:
        calls[0] += 1
        return [GaugeMetricFamily("capwatch_test_calls", "Calls.", calls[0])]

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        expo = LoopSnapshot(loop, snapshot, timeout_s=0.3, min_interval_s=0.0)
        first = _values(list(expo.collect()))
        assert first[("capwatch_test_calls", ())] == 1
        released = threading.Event()
        loop.call_soon_threadsafe(lambda: released.wait(10))  # the loop is stuck in this
        stale = _values(list(expo.collect()))
        released.set()
        assert stale[("capwatch_test_calls", ())] == 1  # the previous snapshot
        assert stale[("capwatch_collector_metrics_snapshot_timeouts_total", ())] == 1
        # The loop is free again: the next scrape is fresh.
        fresh = _values(list(expo.collect()))
        assert fresh[("capwatch_test_calls", ())] >= 2
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_collector_run_refuses_a_bad_metrics_listen_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`collector run --metrics-listen localhost` (no port): exit 2, one line naming the
    setting and the expected form, before anything starts."""
    from collector.cli import main  # noqa: PLC0415

    code = main(["run", "--db", str(tmp_path / "c.db"), "--metrics-listen", "localhost"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert "metrics_listen" in err[0]
    assert "HOST:PORT" in err[0]
    assert not (tmp_path / "c.db").exists()


def test_scrapes_in_quick_succession_share_one_snapshot() -> None:
    """Ten scrapes from ten threads at once cost the loop one snapshot, not ten."""
    import threading  # noqa: PLC0415

    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

    from collector.metrics import LoopSnapshot  # noqa: PLC0415

    async def snapshot() -> list[Metric]:
        await asyncio.sleep(0.05)  # long enough for the other scrapes to pile up
        return [GaugeMetricFamily("capwatch_test", "Test.", 1)]

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        expo = LoopSnapshot(loop, snapshot, timeout_s=10, min_interval_s=60)
        results: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
        scrapers = [
            threading.Thread(target=lambda: results.append(_values(list(expo.collect()))))
            for _ in range(10)
        ]
        for t in scrapers:
            t.start()
        for t in scrapers:
            t.join(30)
        assert len(results) == 10
        assert all(r[("capwatch_test", ())] == 1 for r in results)
        assert expo.snapshots == 1
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def test_samples_at_the_schemas_bounds_give_finite_exact_aggregates() -> None:
    """Nodes at every bound at once (64 GPUs at 5 kW and 100 %, RAPL at 10 kW) sum to the
    exact figures: nothing a node may send overflows or poisons the fleet series."""
    from shared.schema import MAX_CPU_POWER_W, MAX_GPU_POWER_W, MAX_GPUS  # noqa: PLC0415

    sim = FleetSimulator(1, gpus_per_node=1, seed=9, interval_s=5)
    base = sim.sample(0, NOW, 0)
    gpu = msgspec.structs.replace(
        base.gpus[0], util_pct=100.0, power_w=MAX_GPU_POWER_W, power_interval_w=MAX_GPU_POWER_W
    )
    view = LiveView()
    nodes = 200
    for i in range(nodes):
        sample = msgspec.structs.replace(
            base,
            node=f"n{i}",
            cpu_power_w=MAX_CPU_POWER_W,
            gpus=[
                msgspec.structs.replace(
                    gpu, index=k, uuid=f"GPU-{k:08x}-0000-4000-8000-000000000000"
                )
                for k in range(MAX_GPUS)
            ],
        )
        view.on_sample(sample, NOW)
    got = _values(await fleet_families(view, NOW, staleness=Staleness(3, 5)))
    assert got[("capwatch_fleet_gpus", ())] == nodes * MAX_GPUS
    assert got[("capwatch_fleet_gpu_power_watts", ())] == nodes * MAX_GPUS * MAX_GPU_POWER_W
    assert got[("capwatch_fleet_gpu_utilisation_ratio", ())] == 1.0
    assert got[("capwatch_fleet_node_power_watts", ())] == nodes * (
        MAX_GPUS * MAX_GPU_POWER_W + MAX_CPU_POWER_W
    )


async def test_node_input_power_is_summed_by_source_while_fresh() -> None:
    """Nodes whose BMC reports input power: the sum per source; a stale reading is not
    counted, and a source nobody reads has no power series."""
    sim = FleetSimulator(4, seed=2, interval_s=5, bmc_share=0.5)
    view = LiveView()
    for i in range(4):
        view.on_sample(sim.sample(i, NOW, 0), NOW)
    got = _values(await fleet_families(view, NOW, staleness=Staleness(3, 5)))
    readings = [st.sample.node_power_w or 0.0 for st in view.nodes() if st.sample is not None]
    assert got[("capwatch_fleet_node_input_power_watts", (("source", "dcmi"),))] == pytest.approx(
        sum(readings)
    )
    assert got[("capwatch_fleet_node_input_power_nodes", (("source", "dcmi"),))] == 2
    assert ("capwatch_fleet_node_input_power_watts", (("source", "redfish"),)) not in got
    later = _values(await fleet_families(view, NOW + 60, staleness=Staleness(3, 5)))
    assert later[("capwatch_fleet_node_input_power_nodes", (("source", "dcmi"),))] == 0


@pytest.mark.integration
async def test_the_scrape_answers_while_the_postgresql_store_is_away(
    postgres_server: LocalPostgres, postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL stopped: the snapshot still comes (the writer's counters say the store is
    away), only without the store's size; a failed size read no longer fails the scrape."""
    collector = _collector(tmp_path)
    async with Store(parse_target(postgres_url)) as store:
        metrics = collector.exposition(store)
        size = "capwatch_collector_store_size_bytes"
        assert _values(await metrics.snapshot())[(size, ())] > 0
        postgres_server.stop()
        try:
            away = _values(await metrics.snapshot())
        finally:
            postgres_server.start()
        assert (size, ()) not in away
        assert ("capwatch_fleet_nodes", (("state", "online"),)) in away
