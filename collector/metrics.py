"""The collector's ``/metrics``: its own health, fleet aggregates and alert counts.

No per-GPU (or per-node) series: 12,500 nodes x 8 GPUs would be a million series; those are
the agents' ``/metrics``. Everything here is a handful of series whatever the fleet size.

Where the work happens. The collector is one asyncio loop, and the HTTP server runs in a
thread (:mod:`shared.metrics_http`). A scrape asks the loop for a snapshot
(``run_coroutine_threadsafe``): each *source* is a small ``async`` function that reads the
loop's objects (the health facts, the live view, the alert states) and returns finished metric
families. The fleet source walks a copy of the node list in chunks of
:data:`FLEET_CHUNK_NODES`, yielding to the loop between chunks, and adds per-node sums the
live view keeps on each update (never per GPU), so a scrape at 12,500 nodes never holds the
loop for more than one chunk. Turning families into text happens in the HTTP thread. If the
loop does not answer within ``timeout_s`` (stalled), the scrape gets the last snapshot and
``capwatch_collector_metrics_snapshot_timeouts_total`` goes up.

Adding a family later (capacity, quotas) is one function: write ``async def f() ->
list[Metric]`` and :meth:`CollectorMetrics.add` it.

The counters and the batch commit histogram are not sources: each component owns its
prometheus_client objects, registered on the collector's one registry
(:mod:`collector.counters`), and increments them itself (their own locks, no snapshot
needed). ``/readyz`` is the collector's :class:`~collector.health.Health`, as the watchdog is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as _PromCollector

from collector.alerts.evaluator import AlertState
from collector.alerts.rule import SEVERITIES
from collector.health import Health
from collector.live import LiveView
from collector.nodefacts import STATES, Staleness
from collector.settings import CollectorSettings
from collector.store.db import Store
from collector.store.health import oldest_sample_received, store_size_bytes
from shared.clock import Clock
from shared.errors import StoreError
from shared.logging import get_logger
from shared.metrics_http import MetricsServer, parse_listen
from shared.schema import NODE_POWER_SOURCES

if TYPE_CHECKING:
    from collector.sd import ServiceDiscovery

__all__ = [
    "FLEET_CHUNK_NODES",
    "CollectorMetrics",
    "FamilySource",
    "LoopSnapshot",
    "alert_families",
    "fleet_families",
]

log = get_logger("metrics")

FamilySource = Callable[[], Awaitable[list[Metric]]]
"""Runs on the event loop at each scrape; returns finished metric families."""

FLEET_CHUNK_NODES: Final = 500
"""Nodes summed between two yields to the loop (~0.4 ms of work on the development machine)."""


async def fleet_families(
    view: LiveView,
    now: float,
    *,
    staleness: Staleness,
    chunk: int = FLEET_CHUNK_NODES,
) -> list[Metric]:
    """Nodes by state, GPUs, mean GPU utilisation and power over the online nodes, as
    ``collector query`` counts them (:mod:`collector.nodefacts`)."""
    nodes = list(view.nodes())  # a copy: the view may change while we yield
    counts = dict.fromkeys(STATES, 0)
    gpus = util_n = with_gaps = 0
    util_sum = 0.0
    gpu_w: float | None = None
    cpu_w: float | None = None
    input_w = dict.fromkeys((*NODE_POWER_SOURCES, "other"), 0.0)
    input_n = dict.fromkeys(input_w, 0)
    for start in range(0, len(nodes), chunk):
        if start:
            await asyncio.sleep(0)
        for st in nodes[start : start + chunk]:
            if st.reject_only:
                continue
            if st.gaps:
                with_gaps += 1
            if st.node_power is not None:
                reading = staleness.node_power(st, now)
                if reading is not None:
                    src = reading.source if reading.source in input_w else "other"
                    input_w[src] += reading.watts
                    input_n[src] += 1
            sample = st.sample
            state = staleness.of(st, now)
            counts[state] += 1
            if state != "online" or sample is None:
                continue
            gpus += len(sample.gpus)
            util_sum += st.gpu_util_sum
            util_n += st.gpu_util_n
            if st.gpu_power_w is not None:
                gpu_w = st.gpu_power_w + (gpu_w or 0.0)
            if sample.cpu_power_w is not None:
                cpu_w = sample.cpu_power_w + (cpu_w or 0.0)
    by_state = GaugeMetricFamily(
        "capwatch_fleet_nodes", "Nodes by state (online, stale, offline).", labels=["state"]
    )
    for state, n in counts.items():
        by_state.add_metric([state], n)
    inputs = GaugeMetricFamily(
        "capwatch_fleet_node_input_power_watts",
        "Nodes' input power as their BMC (DCMI, Redfish) or PSU sensors (hwmon) read it, "
        "fresh readings only, by source (absent: no node reads it), W.",
        labels=["source"],
    )
    inputs_n = GaugeMetricFamily(
        "capwatch_fleet_node_input_power_nodes",
        "Nodes with a fresh input power reading, by source.",
        labels=["source"],
    )
    for src, w in input_w.items():
        if input_n[src]:  # no reading from a source: its power is unknown, not 0 W
            inputs.add_metric([src], w)
        inputs_n.add_metric([src], input_n[src])
    out: list[Metric] = [
        by_state,
        inputs,
        inputs_n,
        GaugeMetricFamily("capwatch_fleet_gpus", "GPUs on online nodes.", gpus),
        GaugeMetricFamily(
            "capwatch_fleet_live_nodes", "Nodes the live view holds (bounded).", len(nodes)
        ),
        CounterMetricFamily(
            "capwatch_fleet_live_refused",
            "Node updates dropped because the live view was full.",
            view.refused,
        ),
        CounterMetricFamily(
            "capwatch_fleet_live_xids_dropped",
            "XID events the live view let go: their GPU reported newer events of more "
            "codes than it keeps per GPU (collector.live).",
            view.xids_dropped,
        ),
        CounterMetricFamily(
            "capwatch_fleet_sample_gaps",
            "Jumps in a node's seq within one agent epoch (samples it numbered, never "
            "received), all nodes, since the collector started (in a share group: counted "
            "from the leader's live feed only, so none on a standby).",
            view.gaps_total,
        ),
        CounterMetricFamily(
            "capwatch_fleet_samples_missing",
            "Samples missing in those gaps, all nodes; `collector query --node N --gaps`.",
            view.missing_total,
        ),
        CounterMetricFamily(
            "capwatch_fleet_agent_conflicts",
            "Samples that showed a second agent publishing under their node's name (two "
            "agent runs alternating, or seq going back while time goes on), all nodes; the "
            "NodeAgentConflict alert names the node.",
            view.conflicts_total,
        ),
        GaugeMetricFamily(
            "capwatch_fleet_nodes_with_gaps",
            "Nodes with a gap in the live view's memory (the last few per node).",
            with_gaps,
        ),
    ]
    # Unknown is absent, not 0 W: a family with no sample (declared, so dashboards and the
    # test that checks them see every name the collector can expose).
    node_w = None if gpu_w is None and cpu_w is None else (gpu_w or 0.0) + (cpu_w or 0.0)
    out += [
        _maybe(
            "capwatch_fleet_gpu_utilisation_ratio",
            "Mean GPU utilisation over the online GPUs that report it (0-1).",
            util_sum / util_n / 100.0 if util_n else None,
        ),
        _maybe(
            "capwatch_fleet_gpu_power_watts",
            "GPU power of the online nodes (interval power where known), W.",
            gpu_w,
        ),
        _maybe("capwatch_fleet_cpu_power_watts", "CPU (RAPL) power of the online nodes, W.", cpu_w),
        _maybe(
            "capwatch_fleet_node_power_watts",
            "Measured node power of the online nodes: GPU + CPU sensors (not fans, NICs, "
            "PSU losses), W.",
            node_w,
        ),
    ]
    return out


def _maybe(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    """A gauge family with one sample, or none when ``value`` is unknown."""
    g = GaugeMetricFamily(name, doc, labels=[])
    if value is not None:
        g.add_metric([], value)
    return g


def alert_families(states: Iterable[AlertState]) -> list[Metric]:
    """Pending and firing alerts by severity; every pair present (0 when none)."""
    counts = {(s, sev): 0 for s in ("pending", "firing") for sev in SEVERITIES}
    for st in states:
        key = (st.state, st.labels.get("severity", ""))
        if key in counts:
            counts[key] += 1
    g = GaugeMetricFamily(
        "capwatch_alerts", "Alerts by state and severity.", labels=["state", "severity"]
    )
    for (state, severity), n in counts.items():
        g.add_metric([state, severity], n)
    return [g]


class LoopSnapshot(_PromCollector):
    """A prometheus_client collector that runs ``snapshot`` on ``loop`` (from the HTTP
    thread) and yields its families; the previous ones if the loop does not answer in time.

    Bounded work on the loop whatever the scrape rate: scrapes take turns (a lock), and one
    that comes within ``min_interval_s`` of the last snapshot reuses it, so two Prometheus
    replicas, or a scraper gone wild, cost the loop at most one snapshot per interval.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        snapshot: FamilySource,
        timeout_s: float,
        *,
        min_interval_s: float = 1.0,
    ) -> None:
        self._loop = loop
        self._snapshot = snapshot
        self._timeout_s = timeout_s
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last: list[Metric] = []
        self._last_at = float("-inf")
        self.timeouts = 0
        self.snapshots = 0
        """Snapshots taken on the loop (a test counts them)."""

    async def _take(self) -> list[Metric]:
        return await self._snapshot()

    def _families(self) -> list[Metric]:
        with self._lock:
            if time.monotonic() - self._last_at < self._min_interval_s:
                return self._last
            future = asyncio.run_coroutine_threadsafe(self._take(), self._loop)
            try:
                self._last = future.result(self._timeout_s)
            except TimeoutError:
                future.cancel()
                self.timeouts += 1
                log.warning("metrics_snapshot_timeout", timeout_s=self._timeout_s)
                return self._last
            self.snapshots += 1
            self._last_at = time.monotonic()
            return self._last

    def collect(self) -> Iterator[Metric]:
        yield from self._families()
        yield CounterMetricFamily(
            "capwatch_collector_metrics_snapshot_timeouts",
            "Scrapes the event loop did not answer in time (they got the previous snapshot).",
            self.timeouts,
        )


class CollectorMetrics:
    """The collector's scrape-time sources on ``registry``; :meth:`serve` runs the endpoint.

    The counters and the commit histogram are not here: each component registered its own
    on the same registry (:mod:`collector.counters` lists them).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        store: Store,
        settings: CollectorSettings,
        *,
        clock: Clock,
        live: LiveView,
        alert_states: Callable[[], Iterable[AlertState]],
        timeout_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self._clock = clock
        self._live = live
        self._alert_states = alert_states
        self.oldest_received: float | None = None
        self.name = "store_stats"
        self.interval_s = 10.0
        """As an evaluator :class:`~collector.evaluate.Cycle`: the oldest row is read this often."""
        self._timeout_s = timeout_s
        self._sources: list[FamilySource] = []
        self.port: int | None = None
        """The bound port while serving (``metrics_listen`` may say 0)."""
        self._health: Health | None = None
        self.add(self._health_facts)
        self.add(self._store)
        self.add(self._fleet)
        self.add(self._alerts)

    def add(self, source: FamilySource) -> None:
        """Add a source of families (capacity, quotas, ...): run on the loop at each scrape."""
        self._sources.append(source)

    async def snapshot(self) -> list[Metric]:
        """Every source's families, now (on the event loop)."""
        out: list[Metric] = []
        for source in self._sources:
            out += await source()
        return out

    async def __call__(self, store: Store, view: LiveView) -> None:
        """The evaluator cycle: read the oldest sample's arrival time (one index descent)."""
        self.oldest_received = await oldest_sample_received(store)

    @contextlib.asynccontextmanager
    async def serve(self, health: Health) -> AsyncIterator[MetricsServer]:
        """Serve ``/metrics``, ``/healthz``, ``/readyz`` on ``metrics_listen`` while inside;
        ``/readyz`` and the queue, broker and commit gauges are ``health``'s."""
        listen = self.settings.metrics_listen
        assert listen is not None
        host, port = parse_listen(listen, field="metrics_listen")
        self.oldest_received = await oldest_sample_received(self.store)
        self._health = health
        expo = LoopSnapshot(asyncio.get_running_loop(), self.snapshot, self._timeout_s)
        self.registry.register(expo)
        try:
            async with MetricsServer(
                host,
                port,
                self.registry,
                health.ready,
                web_config_file=self.settings.web_config_file,
                routes={"/sd": self.service_discovery()},
            ) as server:
                self.port = server.port
                yield server
        finally:
            self.registry.unregister(expo)

    def service_discovery(self) -> ServiceDiscovery:
        """``/sd``: the agents as Prometheus HTTP service discovery target groups."""
        from collector.capacity.config import rack_rules  # noqa: PLC0415
        from collector.nodefacts import rack_of  # noqa: PLC0415
        from collector.sd import ServiceDiscovery  # noqa: PLC0415
        from collector.sdtargets import TargetHosts  # noqa: PLC0415

        rules = rack_rules(self.settings.capacity.plan)  # the plan was checked at start
        return ServiceDiscovery(
            self.settings.store_target,
            functools.partial(rack_of, rules=rules),
            self._clock.time,
            hosts=TargetHosts(self.settings.sd_target_hosts),
            registry=self.registry,
        )

    # -- the built-in sources

    async def _health_facts(self) -> list[Metric]:
        return [] if self._health is None else self._health.families()

    async def _store(self) -> list[Metric]:
        try:
            size: float | None = await store_size_bytes(self.store)
        except StoreError as exc:
            # The store away (PostgreSQL restarting): the scrape still answers, without the
            # size, and its store_unavailable counter says what is going on.
            log.debug("metrics_store_size_unread", error=str(exc))
            size = None
        return [
            _maybe(
                "capwatch_collector_store_size_bytes",
                "Database file and write-ahead log on disk.",
                size,
            ),
            _maybe(
                "capwatch_collector_store_oldest_sample_timestamp_seconds",
                "Arrival time of the oldest stored sample (Unix seconds).",
                self.oldest_received,
            ),
        ]

    async def _fleet(self) -> list[Metric]:
        return await fleet_families(
            self._live, self._clock.time(), staleness=self.settings.staleness()
        )

    async def _alerts(self) -> list[Metric]:
        return alert_families(self._alert_states())
