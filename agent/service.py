"""The agent's lifecycle: a sampling task, a publishing task and the spool's fsync task.

The sampler ticks on a monotonic schedule (``start + k * interval``; a late tick is not
made up twice), takes a sample in a worker thread (NVML calls block), encodes it and
appends it to the on-disk spool (page cache; fsync happens in a worker thread every
``spool_fsync_s``). The publisher empties the spool whenever the broker is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from agent.bounds import Bounds
from agent.host import HostSampler, NicFilter
from agent.jobs import JobAttributor
from agent.node import NodeSampler, make_gpu_backend
from agent.nodepower import DcmiPower, HwmonPower, NodePower
from agent.publisher import Publisher
from agent.rapl import RaplReader
from agent.settings import AgentSettings
from agent.spool import Spool
from shared.clock import Clock, SystemClock
from shared.logging import get_logger
from shared.schema import Inventory, encode

if TYPE_CHECKING:
    from agent.metrics import AgentExposition, AgentStats
    from shared.sdnotify import SdNotifier

__all__ = ["AgentService", "build_node_power", "build_sampler", "next_tick"]

log = get_logger("agent")


def build_sampler(settings: AgentSettings, clock: Clock) -> NodeSampler:
    """The node sampler the settings describe (GPU backend, sysfs/proc roots, intervals,
    job attribution)."""
    jobs = None
    if settings.attribute_jobs and settings.gpu_backend != "none":
        jobs = JobAttributor(
            settings.proc_root,
            Bounds(clock, get_logger("agent.jobs")),
            pod_log_root=settings.pod_log_dir,
        )
    return NodeSampler(
        settings.node_id,
        gpu=make_gpu_backend(
            settings.gpu_backend,
            fake_gpus=settings.fake_gpus,
            fake_mig=settings.fake_mig,
            clock=clock,
        ),
        rapl=RaplReader(settings.sysfs_root, clock),
        host=HostSampler(
            clock,
            proc_root=settings.proc_root,
            sysfs_root=settings.sysfs_root,
            nic_filter=NicFilter(include=settings.nic_include, exclude=settings.nic_exclude),
        ),
        interval_s=settings.interval_s,
        slow_interval_s=settings.slow_interval_s,
        clock=clock,
        node_power=build_node_power(settings, clock),
        jobs=jobs,
    )


def build_node_power(settings: AgentSettings, clock: Clock) -> NodePower | None:
    """The node power sources the settings ask for and this node has (``None``: none)."""
    kind = settings.node_power
    dcmi = hwmon = None
    if kind in ("auto", "dcmi") and (kind == "dcmi" or settings.ipmi_device.exists()):
        dcmi = DcmiPower(settings.dcmi_command, timeout_s=settings.dcmi_timeout_s)
    if kind in ("auto", "hwmon"):
        hwmon = HwmonPower(settings.sysfs_root)
    reader = NodePower(clock, dcmi=dcmi, hwmon=hwmon, interval_s=settings.node_power_interval_s)
    return reader if reader.sources else None


def next_tick(scheduled: float, now: float, interval: float) -> tuple[float, int]:
    """The tick to wait for: ``scheduled`` if it is not past yet, else the first tick of the
    grid ``scheduled + k * interval`` after ``now``; and how many ticks that skips.

    A sampler that fell behind (host suspended, overloaded) skips the ticks it missed instead
    of taking them back to back: a burst of samples would describe one moment many times.
    """
    if scheduled >= now:
        return scheduled, 0
    skipped = int((now - scheduled) // interval) + 1
    return scheduled + skipped * interval, skipped


class AgentService:
    """``await AgentService(settings, sampler).run()`` until :meth:`stop`.

    The constructor reads the MQTT TLS files (a bad one is a ``ConfigError`` here, not
    inside the task group); :meth:`run` opens the spool (``settings.spool_dir``, which the
    entry point resolves), starts the sampler, then the tasks.
    """

    def __init__(
        self,
        settings: AgentSettings,
        sampler: NodeSampler,
        *,
        clock: Clock | None = None,
        notifier: SdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.notifier = notifier
        """systemd's notify socket (``READY=1``, watchdog) when run by systemd."""
        self.last_sample_at: float | None = None
        """Clock monotonic time of the last sample taken (the watchdog's health check)."""
        self.sampler = sampler
        self.clock: Clock = clock or SystemClock()
        if settings.spool_dir is None:
            raise ValueError("settings.spool_dir must be set (the entry point resolves it)")
        self.spool = Spool(
            settings.spool_dir,
            max_bytes=settings.spool_bytes,
            max_age_s=settings.buffer_s,
            hold_s=settings.watermark_hold_s,
            clock=self.clock.time,
            monotonic=self.clock.monotonic,
            node=settings.node_id,
        )
        self._stop = asyncio.Event()
        self._inventory = b""
        self.publisher = Publisher(
            settings.mqtt,
            settings.node_id,
            self.spool,
            lambda: self._inventory,
            self.clock.time,
            budget=settings.ingest_budget,
            interval_s=settings.interval_s,
        )
        self.samples_taken = 0
        self.exposition: AgentExposition | None = None
        """What ``/metrics`` shows (only with ``metrics_listen``)."""
        self.metrics_port: int | None = None
        """The port ``/metrics`` listens on once running (port 0 in the setting picks one)."""

    def stop(self) -> None:
        """Finish: stop sampling, flush what the broker will take, publish offline."""
        self._stop.set()

    async def run(self) -> None:
        """Sample and publish until :meth:`stop`."""
        await asyncio.to_thread(self.spool.open)
        self.sampler.epoch = self.spool.epoch
        try:
            inventory = await asyncio.to_thread(self.sampler.start)
            self._inventory = encode(inventory)
            log.info(
                "agent_started",
                node=self.settings.node_id,
                gpus=len(inventory.gpus),
                gpu_status=inventory.gpu_status,
                interval_s=self.settings.interval_s,
                epoch=self.spool.epoch,
                spooled=len(self.spool),
            )
            try:
                async with self._metrics_server(inventory), asyncio.TaskGroup() as tg:
                    if self.notifier is not None:
                        tg.create_task(
                            self.notifier.run(self.sampling, self._stop), name="sd-notify"
                        )
                    tg.create_task(self._sample_loop(), name="sampler")
                    if self.sampler.node_power is not None:
                        tg.create_task(self.sampler.node_power.run(self._stop), name="node-power")
                    tg.create_task(self.publisher.run(self._stop), name="publisher")
                    tg.create_task(
                        self.spool.run_sync(self._stop, self.settings.spool_fsync_s),
                        name="spool-sync",
                    )
            finally:
                await asyncio.to_thread(self.sampler.close)
        finally:
            await asyncio.to_thread(self.spool.close)
        log.info(
            "agent_stopped",
            samples=self.samples_taken,
            published=self.publisher.published,
            lost=sum(self.spool.lost.values()),
            unsent_spooled=len(self.spool),
        )

    @contextlib.asynccontextmanager
    async def _metrics_server(self, inventory: Inventory) -> AsyncIterator[None]:
        """Serve ``/metrics``, ``/healthz``, ``/readyz`` while the tasks run (if configured)."""
        if self.settings.metrics_listen is None:
            yield
            return
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 (only when serving)
        from prometheus_client.process_collector import ProcessCollector  # noqa: PLC0415

        from agent.metrics import AgentExposition, advertised_address  # noqa: PLC0415
        from shared.metrics_http import MetricsServer, parse_listen  # noqa: PLC0415

        host, port = parse_listen(self.settings.metrics_listen, field="metrics_listen")
        self.exposition = AgentExposition(
            self.stats, hostname_label=self.settings.dcgm_hostname_label
        )
        self.exposition.inventory = inventory
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.exposition)
        ProcessCollector(registry=registry)
        async with MetricsServer(
            host, port, registry, self.ready, web_config_file=self.settings.web_config_file
        ) as server:
            self.metrics_port = server.port
            # Known once bound (port 0); getfqdn may ask DNS: not on the loop.
            address = await asyncio.to_thread(
                advertised_address, host, server.port, self.settings.metrics_advertise
            )
            self._inventory = encode(msgspec.structs.replace(inventory, metrics_address=address))
            yield

    def stats(self) -> AgentStats:
        """The agent's own counters and connection state, for ``/metrics``."""
        from agent.metrics import AgentStats  # noqa: PLC0415

        ack = self.publisher.last_ack
        return AgentStats(
            samples_taken=self.samples_taken,
            published=self.publisher.published,
            dropped=sum(self.spool.lost.values()),
            buffered=len(self.spool),
            lost=dict(self.spool.lost),
            spool_bytes=self.spool.spool_bytes,
            spool_write_errors=self.spool.write_errors,
            unconfirmed=self.spool.unconfirmed,
            confirmed=self.spool.confirmed,
            resent=self.spool.resent,
            released=self.spool.released,
            watermark_seq=None
            if self.publisher.watermark is None
            else self.publisher.watermark.seq,
            epoch=self.spool.epoch,
            connected=self.publisher.connected.is_set(),
            last_ack_age_s=None if ack is None else max(0.0, time.monotonic() - ack),
        )

    def sampling(self) -> tuple[bool, str]:
        """The watchdog's health check: a sample was taken within two intervals + 30 s (a
        sampler blocked in NVML stops the pings; a missing broker does not)."""
        limit = 2 * self.settings.interval_s + 30.0
        if self.last_sample_at is None:
            return True, "starting"
        age = self.clock.monotonic() - self.last_sample_at
        return age <= limit, f"last sample {age:.0f} s ago (limit {limit:.0f} s)"

    def ready(self) -> tuple[bool, str]:
        """Ready while connected and the broker acknowledged a sample recently: within two
        intervals plus the publish timeout (a sample is due every interval)."""
        if not self.publisher.connected.is_set():
            return False, f"not connected to the broker ({len(self.spool)} samples spooled)"
        ack = self.publisher.last_ack
        if ack is None:
            return False, "connected, no sample acknowledged yet"
        age = time.monotonic() - ack
        limit = 2 * self.settings.interval_s + self.publisher.publish_timeout_s
        if age > limit:
            return False, f"no sample acknowledged for {age:.1f} s (limit {limit:.1f} s)"
        return True, f"ready: last sample acknowledged {age:.1f} s ago"

    async def _sample_loop(self) -> None:
        interval = self.settings.interval_s
        tick = self.clock.monotonic()
        while not self._stop.is_set():
            sample = await asyncio.to_thread(self.sampler.sample)
            self.spool.append(encode(sample))
            self.samples_taken += 1
            self.last_sample_at = self.clock.monotonic()
            if self.exposition is not None:
                self.exposition.update(sample)
            now = self.clock.monotonic()
            tick, skipped = next_tick(tick + interval, now, interval)
            if skipped:
                log.warning("ticks_skipped", count=skipped)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick - now):
                    await self._stop.wait()
