"""The agent's ``/metrics``: the sample it just took, as Prometheus metric families.

No extra sampling: :meth:`AgentExposition.update` keeps a reference to each sample the
service publishes (and the few things a single sample does not carry: the last XID per GPU,
ECC and remapped rows from the last slow tick); a scrape turns that into metric families in
the HTTP thread. Samples are immutable, so the thread reads them without locks.

Names (the README's table lists every one):

* GPU metrics (:mod:`agent.dcgm`) use **dcgm-exporter's names, labels and units**, so
  dashboards built for dcgm-exporter work unchanged.
* Host metrics use node_exporter's names where node_exporter has the same quantity
  (``node_load1``, ``node_memory_MemAvailable_bytes``, ``node_network_receive_errs_total``);
  rates node_exporter leaves to PromQL (CPU busy, bytes/s) are ``capwatch_node_*``.
* What neither has: ``capwatch_gpu_power_interval_watts`` (mean power over the last
  interval from the energy counter: the accurate figure), ``capwatch_node_cpu_power_watts``
  (RAPL), ``capwatch_node_input_power_watts{source}`` (the BMC or PSUs), and the agent's
  own health (``capwatch_agent_*``).

A field the device does not report (``None``) is left out, as dcgm-exporter leaves out
blank fields: absent, never 0.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from agent.dcgm import HostnameLabel, dcgm_families
from shared.schema import (
    METRICS_ADDRESS_PATTERN,
    GpuEcc,
    GpuRemappedRows,
    Inventory,
    Sample,
)

__all__ = [
    "AgentExposition",
    "AgentStats",
    "advertised_address",
    "host_families",
    "render_sample",
]

_LOST_REASONS: Final = ("full", "age", "torn", "corrupt", "memory_full")


@dataclass(frozen=True, slots=True)
class AgentStats:
    """The agent's own state at scrape time (read from the service by the HTTP thread)."""

    samples_taken: int
    published: int
    dropped: int
    buffered: int
    connected: bool
    last_ack_age_s: float | None
    """Seconds since the broker last acknowledged a sample; ``None``: never."""
    lost: Mapping[str, int] = field(default_factory=dict)
    """Spooled samples lost, per reason (``full``, ``age``, ``torn``, ``corrupt``,
    ``memory_full``): :attr:`agent.spool.Spool.lost`."""
    spool_bytes: int = 0
    spool_write_errors: int = 0
    unconfirmed: int = 0
    """Acknowledged by the broker, held for the store's watermark (part of ``buffered``)."""
    confirmed: int = 0
    resent: int = 0
    released: int = 0
    watermark_seq: int | None = None
    epoch: int | None = None


def _gauge(name: str, doc: str, value: float | None, **labels: str) -> GaugeMetricFamily | None:
    if value is None:
        return None
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(labels.values()), value)
    return g


def host_families(sample: Sample, inventory: Inventory | None) -> list[Metric]:
    """The host part of ``sample``: node_exporter's names where it has the quantity."""
    s = sample
    out: list[Metric | None] = [
        _gauge("node_load1", "1m load average.", s.cpu.load1),
        _gauge("node_load5", "5m load average.", s.cpu.load5),
        _gauge("node_load15", "15m load average.", s.cpu.load15),
        _gauge(
            "capwatch_node_cpu_utilisation_ratio",
            "Share of CPU time busy over the last interval (0-1), all CPUs.",
            None if s.cpu.pct is None else s.cpu.pct / 100.0,
        ),
        _gauge("capwatch_node_cpus", "Logical CPUs.", s.cpu.count),
        _gauge("node_memory_MemTotal_bytes", "Memory information field MemTotal_bytes.",
               s.mem.total_bytes),
        _gauge("node_memory_MemAvailable_bytes", "Memory information field MemAvailable_bytes.",
               s.mem.available_bytes),
        _gauge("node_memory_SwapTotal_bytes", "Memory information field SwapTotal_bytes.",
               s.mem.swap_total_bytes),
        _gauge("node_memory_SwapFree_bytes", "Memory information field SwapFree_bytes.",
               max(0, s.mem.swap_total_bytes - s.mem.swap_used_bytes)),
        _gauge("capwatch_node_disk_read_bytes_per_second",
               "Block device reads over the last interval, all disks (bytes/s).",
               s.disk_io.read_bytes_per_s),
        _gauge("capwatch_node_disk_written_bytes_per_second",
               "Block device writes over the last interval, all disks (bytes/s).",
               s.disk_io.write_bytes_per_s),
        _gauge("capwatch_node_cpu_power_watts",
               "CPU package (+DRAM where exposed) power from RAPL over the last interval (W).",
               s.cpu_power_w),
        _gauge("capwatch_node_input_power_watts",
               "The whole node's input power, read from its BMC (DCMI) or PSU sensors (W).",
               s.node_power_w, source=s.node_power_source or "unknown"),
    ]  # fmt: skip
    fs_labels = ["device", "fstype", "mountpoint"]
    size = GaugeMetricFamily(
        "node_filesystem_size_bytes", "Filesystem size in bytes.", labels=fs_labels
    )
    free = GaugeMetricFamily(
        "node_filesystem_free_bytes", "Filesystem free space in bytes.", labels=fs_labels
    )
    for d in s.disks:
        values = [d.device, d.fstype, d.mount]
        size.add_metric(values, d.total_bytes)
        free.add_metric(values, max(0, d.total_bytes - d.used_bytes))
    out += [size, free]
    rx = GaugeMetricFamily(
        "capwatch_node_network_receive_bytes_per_second",
        "Bytes received over the last interval (bytes/s).",
        labels=["device"],
    )
    tx = GaugeMetricFamily(
        "capwatch_node_network_transmit_bytes_per_second",
        "Bytes sent over the last interval (bytes/s).",
        labels=["device"],
    )
    counters = {
        "receive_errs": CounterMetricFamily(
            "node_network_receive_errs", "Network device statistic receive_errs.", labels=["device"]
        ),
        "transmit_errs": CounterMetricFamily(
            "node_network_transmit_errs",
            "Network device statistic transmit_errs.",
            labels=["device"],
        ),
        "receive_drop": CounterMetricFamily(
            "node_network_receive_drop", "Network device statistic receive_drop.", labels=["device"]
        ),
        "transmit_drop": CounterMetricFamily(
            "node_network_transmit_drop",
            "Network device statistic transmit_drop.",
            labels=["device"],
        ),
    }
    for nic in s.net.nics:
        if nic.rx_bytes_per_s is not None:
            rx.add_metric([nic.name], nic.rx_bytes_per_s)
        if nic.tx_bytes_per_s is not None:
            tx.add_metric([nic.name], nic.tx_bytes_per_s)
        counters["receive_errs"].add_metric([nic.name], nic.rx_errors)
        counters["transmit_errs"].add_metric([nic.name], nic.tx_errors)
        counters["receive_drop"].add_metric([nic.name], nic.rx_drops)
        counters["transmit_drop"].add_metric([nic.name], nic.tx_drops)
    out += [rx, tx, *counters.values()]
    if inventory is not None:
        speed = GaugeMetricFamily(
            "node_network_speed_bytes", "Network device property: speed_bytes.", labels=["device"]
        )
        for n in inventory.nics:
            if n.speed_mbps is not None:
                speed.add_metric([n.name], n.speed_mbps * 125_000)
        out.append(speed)
    return [m for m in out if m is not None]


def _agent_families(
    stats: AgentStats, inventory: Inventory | None, sample: Sample | None
) -> Iterator[Metric]:
    if inventory is not None:
        info = InfoMetricFamily("capwatch_agent", "The agent and its node.")
        info.add_metric(
            [],
            {
                "node": inventory.node,
                "version": inventory.agent_version,
                "gpu_status": inventory.gpu_status,
                "gpu_driver": inventory.gpu_driver or "",
            },
        )
        yield info
        yield GaugeMetricFamily(
            "capwatch_agent_gpus", "GPUs in the inventory.", len(inventory.gpus)
        )
    yield CounterMetricFamily(
        "capwatch_agent_samples", "Samples taken by this agent process.", stats.samples_taken
    )
    yield CounterMetricFamily(
        "capwatch_agent_published", "Samples the broker acknowledged (PUBACK).", stats.published
    )
    yield CounterMetricFamily(
        "capwatch_agent_dropped",
        "Spooled samples lost before the broker had them, all reasons.",
        stats.dropped,
    )
    lost = CounterMetricFamily(
        "capwatch_agent_spool_lost_samples",
        "Spooled samples lost before the broker had them: full (oldest dropped past "
        "spool_max_bytes), age (past buffer_s), torn (a write cut short by a crash), corrupt "
        "(bad bytes skipped; one per run), memory_full (disk unwritable, memory fallback full).",
        labels=["reason"],
    )
    for reason in _LOST_REASONS:
        lost.add_metric([reason], stats.lost.get(reason, 0))
    yield lost
    yield GaugeMetricFamily(
        "capwatch_agent_buffered_samples",
        "Samples in the spool: waiting for the broker's acknowledgement, or held for the "
        "store's watermark.",
        stats.buffered,
    )
    yield GaugeMetricFamily(
        "capwatch_agent_unconfirmed_samples",
        "Samples the broker acknowledged, held until the collector's store watermark passes them.",
        stats.unconfirmed,
    )
    yield CounterMetricFamily(
        "capwatch_agent_confirmed_samples",
        "Held samples the store's watermark passed (then forgotten).",
        stats.confirmed,
    )
    yield CounterMetricFamily(
        "capwatch_agent_resent_samples",
        "Held samples sent again because the store's watermark reported a hole.",
        stats.resent,
    )
    yield CounterMetricFamily(
        "capwatch_agent_released_samples",
        "Held samples forgotten unconfirmed: watermark_hold_s after their PUBACK, or dropped "
        "with a full or expired spool segment (the broker had them).",
        stats.released,
    )
    if stats.watermark_seq is not None:
        yield GaugeMetricFamily(
            "capwatch_agent_watermark_seq",
            "The last store watermark heard (every seq of its epoch up to it is stored; -1: "
            "none yet).",
            stats.watermark_seq,
        )
    yield GaugeMetricFamily(
        "capwatch_agent_spool_bytes", "Bytes of the spool's segment files.", stats.spool_bytes
    )
    yield CounterMetricFamily(
        "capwatch_agent_spool_write_errors",
        "Spool writes that failed (disk full, I/O error); the sample waited in memory.",
        stats.spool_write_errors,
    )
    if stats.epoch is not None:
        yield GaugeMetricFamily(
            "capwatch_agent_epoch",
            "The agent's boot counter (counted up at each start from a fresh spool's wall clock "
            "in ms; samples carry it).",
            stats.epoch,
        )
    yield GaugeMetricFamily(
        "capwatch_agent_mqtt_connected", "1 while connected to the broker.", int(stats.connected)
    )
    if stats.last_ack_age_s is not None:
        yield GaugeMetricFamily(
            "capwatch_agent_last_ack_age_seconds",
            "Seconds since the broker last acknowledged a sample.",
            stats.last_ack_age_s,
        )
    if sample is not None:
        yield GaugeMetricFamily(
            "capwatch_agent_sample_timestamp_seconds",
            "Wall-clock time of the sample these metrics show (Unix seconds).",
            sample.ts,
        )


class AgentExposition(Collector):
    """A prometheus_client collector over the agent's latest sample.

    The service calls :meth:`update` with each sample it takes (one reference kept, a loop
    over that sample's XIDs; nothing else per tick) and sets :attr:`inventory` once.
    """

    def __init__(
        self, stats: Callable[[], AgentStats], *, hostname_label: HostnameLabel = "Hostname"
    ) -> None:
        self._stats = stats
        self._hostname_label: HostnameLabel = hostname_label
        self.inventory: Inventory | None = None
        self.sample: Sample | None = None
        self._last_xid: dict[int, int] = {}
        self._ecc: dict[int, GpuEcc] = {}
        self._remapped: dict[int, GpuRemappedRows] = {}

    def update(self, sample: Sample) -> None:
        """Hold ``sample`` as the one to show; remember what later samples will not repeat."""
        for ev in sample.xids:
            self._last_xid[ev.gpu_index] = ev.xid
        for gpu in sample.gpus:
            if gpu.ecc is not None:
                self._ecc[gpu.index] = gpu.ecc
            if gpu.remapped_rows is not None:
                self._remapped[gpu.index] = gpu.remapped_rows
        self.sample = sample  # last: a scrape sees the carried-over state first

    def collect(self) -> Iterator[Metric]:
        """Metric families for one scrape (runs in the HTTP server's thread)."""
        sample, inventory = self.sample, self.inventory
        yield from _agent_families(self._stats(), inventory, sample)
        if sample is None:
            return
        yield from host_families(sample, inventory)
        yield from dcgm_families(
            sample,
            inventory,
            last_xid=dict(self._last_xid),
            ecc=dict(self._ecc),
            remapped=dict(self._remapped),
            hostname_label=self._hostname_label,
        )


def render_sample(sample: Sample, inventory: Inventory | None = None) -> bytes:
    """What a scrape of an agent that just took ``sample`` returns (its own health figures
    zero): for benchmarks and tests of the exposition."""
    expo = AgentExposition(
        lambda: AgentStats(
            samples_taken=1, published=1, dropped=0, buffered=0, connected=True, last_ack_age_s=0
        )
    )
    expo.inventory = inventory
    expo.update(sample)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(expo)
    return generate_latest(registry)


_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})


def advertised_address(
    listen_host: str,
    port: int,
    advertise: str | None,
    *,
    fqdn: Callable[[], str] = socket.getfqdn,
) -> str | None:
    """The ``HOST:PORT`` the inventory announces for ``/metrics``: ``advertise`` when set;
    else the listen host when it names one (``10.1.2.3``), or ``fqdn()`` when it listens on
    every address, with the bound ``port``. ``None`` when that is not a valid target (an
    FQDN with a character Prometheus would refuse): better no address than an inventory
    the collector must reject."""
    if advertise is not None:
        return advertise
    host = fqdn() if listen_host in _WILDCARDS else listen_host
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return address if re.fullmatch(METRICS_ADDRESS_PATTERN, address) else None
