"""``agent simulate``: a synthetic fleet publishing realistic samples.

Each simulated node gets an xname id (``x1000c0s0b0n0`` ...), ``gpus_per_node`` fake H100s
and a deterministic load profile drawn from the seed (a base load, a slow sinusoid, per-GPU
jitter), so the same seed always gives the same fleet. GPU power follows utilisation between
idle and the power limit; the energy counter integrates it, so interval power from the
counter and the instantaneous reading agree as on real parts.

Each node also draws what no sensor reports (DRAM, NVMe, NICs, fans, PSU losses): its own
``rest_w`` around ``rest_mean_w`` (+- ``rest_spread_w``, fixed per node by the seed), and
with ``bmc_share`` a share of the nodes report their input power as a BMC reads it
(``node_power_w`` = GPUs + CPU + that rest, source ``dcmi``): :meth:`FleetSimulator.true_power_w`
is each node's truth, reported or not.

Publishing uses one MQTT connection and ``workers`` coroutines that each await their own
QoS 1 PUBACKs, so up to ``workers`` messages are in flight without one task per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import aiomqtt

from agent.publisher import next_backoff, refused_credentials
from shared.logging import get_logger
from shared.schema import (
    MAX_GPUS,
    CpuPackage,
    CpuStats,
    DiskIoStats,
    DiskStats,
    GpuInfo,
    GpuSample,
    Inventory,
    MemStats,
    NetStats,
    NodeStatus,
    Sample,
    encode,
)
from shared.settings import MqttSettings
from shared.topics import inventory_topic, sample_topic, status_topic

__all__ = [
    "NODE_INDEXES",
    "STOP_GRACE_S",
    "FleetSimulator",
    "SimStats",
    "pci_bus_id",
    "publish_fleet",
    "xname",
]

log = get_logger("simulate")

_GPU_NAME: Final = "NVIDIA H100 80GB HBM3"
_GPU_MEM: Final = 80 * 1024**3
_GPU_LIMIT_W: Final = 700.0
_GPU_IDLE_W: Final = 70.0
_GPU_MEM_CLOCK_MHZ: Final = 2619  # HBM3, the same under load and idle
_GPU_MEM_RESERVED: Final = 512 * 1024**2
_NODE_MEM: Final = 2 * 1024**4
_CPUS: Final = 224


def _level(util: int) -> tuple[float, int, float, int, int, int, float]:
    busy = util > 5
    return (
        _GPU_IDLE_W + (_GPU_LIMIT_W - _GPU_IDLE_W) * util / 100,
        int(_GPU_MEM * (0.1 + 0.8 * util / 100)),
        round(32 + 0.45 * util, 1),
        1980 if busy else 345,
        0 if busy else 1,  # 1 = GPU idle (nvmlClocksEventReasonGpuIdle)
        0 if busy else 8,
        round(util * 0.6, 1),
    )


# Per whole-percent utilisation: (power W, memory used, temperature, SM clock, clock event
# reasons, pstate, memory util). A table keeps generation cheap enough to drive the
# collector at fleet rate from the same machine.
_LEVELS: Final = tuple(_level(u) for u in range(101))


def pci_bus_id(g: int) -> str:
    """GPU ``g``'s PCI address: eight per PCI domain (as on an HGX board), 16 buses apart.

    Valid for any ``g`` below ``MAX_GPUS`` and beyond: the bus stays two hex digits.
    """
    return f"{g // 8:08X}:{0x18 + (g % 8) * 0x10:02X}:00.0"


NODE_INDEXES: Final = 16**8
"""Node indexes ``0 .. NODE_INDEXES - 1``: a node's index is its GPUs' UUIDs' first group of
8 hex digits (``GPU-<index>-...``), which the wire schema's UUID pattern holds to 8."""


def xname(i: int) -> str:
    """The i-th node's HPE Cray style name: cabinet, chassis, slot, board, node."""
    return f"x{1000 + i // 256}c{(i // 32) % 8}s{(i // 4) % 8}b{(i // 2) % 2}n{i % 2}"


@dataclass(slots=True)
class _Profile:
    base: float
    amp: float
    period_s: float
    phase: float
    energy_j: list[float]


_PACE_S: Final = 0.002
"""A spread tick sleeps at most this often (see :func:`publish_fleet`): a sleep per message
costs more than 10,000 messages a second allow."""

STOP_GRACE_S: Final = 5.0
"""After ``stop``, how long the simulator goes on sending what it generated (then the nodes'
``offline`` statuses) before it gives the rest up: with the broker gone, the send waited for
a reconnect for ever, and a SIGTERM or Ctrl-C did not end ``agent simulate`` (the demo
SIGKILLed it after 15 s)."""


@dataclass(slots=True)
class SimStats:
    """What a simulation run did."""

    published: int = 0
    ticks: int = 0
    late_ticks: int = 0
    elapsed_s: float = 0.0
    errors: int = 0
    reconnects: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class FleetSimulator:
    """Generates samples and inventories for ``nodes`` synthetic nodes."""

    def __init__(
        self,
        nodes: int,
        *,
        gpus_per_node: int = 8,
        seed: int = 0,
        interval_s: float = 5.0,
        first_index: int = 0,
        bmc_share: float = 0.0,
        rest_mean_w: float = 1_900.0,
        rest_spread_w: float = 150.0,
        epoch: int | None = None,
    ) -> None:
        """``epoch``: the agents' boot counter their samples carry (``Sample.epoch``, with
        ``seq`` counting from 0 in it, as a real agent's: the collector's watermarks follow
        them); ``None``: samples without one, as from an agent before that field."""
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        if not 0 <= first_index <= NODE_INDEXES - nodes:
            raise ValueError(
                f"first_index must be within 0..{NODE_INDEXES - nodes} for {nodes} nodes, got "
                f"{first_index}"
            )
        if not 0 <= gpus_per_node <= MAX_GPUS:
            raise ValueError(f"gpus_per_node must be within 0..{MAX_GPUS}, got {gpus_per_node}")
        self.gpus_per_node = gpus_per_node
        self.interval_s = interval_s
        self.seed = seed
        self.epoch = epoch
        self.node_ids = [xname(first_index + i) for i in range(nodes)]
        rng = random.Random(seed)
        self._profiles = [
            _Profile(
                base=rng.uniform(10, 85),
                amp=rng.uniform(0, 15),
                period_s=rng.uniform(300, 3600),
                phase=rng.uniform(0, 2 * math.pi),
                energy_j=[rng.uniform(1e6, 1e9) for _ in range(gpus_per_node)],
            )
            for _ in range(nodes)
        ]
        # NVML's form, GPU-8-4-4-4-12 hex digits: node and GPU index make each one unique.
        seed_hex = f"{seed % 16**12:012x}"
        self._uuids = [
            [f"GPU-{i:08x}-{g:04x}-4000-8000-{seed_hex}" for g in range(gpus_per_node)]
            for i in range(first_index, first_index + nodes)
        ]
        self._seq = 0
        if not 0.0 <= bmc_share <= 1.0:
            raise ValueError(f"bmc_share must be within 0..1, got {bmc_share}")
        # Drawn after the profiles, from their own generator: adding these kept every seed's
        # fleet (GPU and CPU power) as it was.
        extra = random.Random(seed * 7919 + 1)
        self.rest_w = [
            rest_mean_w + extra.uniform(-rest_spread_w, rest_spread_w) for _ in range(nodes)
        ]
        """Each node's true unreported parts, W."""
        self.reports_bmc = [i < round(bmc_share * nodes) for i in range(nodes)]
        extra.shuffle(self.reports_bmc)
        """Which nodes report their input power (``node_power_w``)."""

    def true_power_w(self, i: int, sample: Sample) -> float:
        """Node ``i``'s true input power at ``sample``: GPUs (interval power) + CPU + rest."""
        gpus = sum(g.power_interval_w or 0.0 for g in sample.gpus)
        return gpus + (sample.cpu_power_w or 0.0) + self.rest_w[i]

    def inventory(self, i: int, ts: float) -> Inventory:
        """Node ``i``'s retained inventory."""
        node = self.node_ids[i]
        return Inventory(
            v=1,
            node=node,
            ts=ts,
            host=node,
            agent_version="simulated",
            cpu_model="AMD EPYC 9654 96-Core Processor (simulated)",
            cpu_count=_CPUS,
            cpu_cores=_CPUS // 2,
            mem_total_bytes=_NODE_MEM,
            gpus=[
                GpuInfo(
                    index=g,
                    name=_GPU_NAME,
                    uuid=self._uuids[i][g],
                    serial=f"16523{i:06d}{g:02d}",
                    pci_bus_id=pci_bus_id(g),
                    power_limit_w=_GPU_LIMIT_W,
                    mig_mode=False,
                    mem_total_bytes=_GPU_MEM,
                )
                for g in range(self.gpus_per_node)
            ],
            gpu_driver="550.90.07",
            gpu_status="ok",
            cpus=[CpuPackage(model="AMD EPYC 9654 96-Core Processor (simulated)", sockets=2)],
            mem_installed_bytes=_NODE_MEM,
        )

    def sample(self, i: int, ts: float, seq: int) -> Sample:
        """Node ``i`` at time ``ts`` (deterministic for a seed, ts and seq)."""
        p = self._profiles[i]
        load = p.base + p.amp * math.sin(2 * math.pi * ts / p.period_s + p.phase)
        dt = self.interval_s
        uuids = self._uuids[i]
        energy = p.energy_j
        gpus = []
        total_util = 0
        for g in range(self.gpus_per_node):
            # NVML reports whole percents; per-GPU jitter of -2..+2 points, deterministic.
            util = int(load + ((i * 2654435761 + g * 40503 + seq * 97) % 5) - 2)
            util = 0 if util < 0 else min(util, 100)
            total_util += util
            watts, mem_used, temp_c, clock, reasons, pstate, mem_util = _LEVELS[util]
            energy[g] += watts * dt
            gpus.append(
                GpuSample(
                    index=g,
                    uuid=uuids[g],
                    util_pct=util,
                    mem_util_pct=mem_util,
                    mem_used_bytes=mem_used,
                    mem_total_bytes=_GPU_MEM,
                    power_w=watts + (seq % 7) - 3,
                    power_interval_w=watts,
                    energy_j=round(energy[g], 1),
                    temp_c=temp_c,
                    sm_clock_mhz=clock,
                    clock_event_reasons=reasons,
                    pstate=pstate,
                    mem_clock_mhz=_GPU_MEM_CLOCK_MHZ,
                    mem_temp_c=temp_c + 5.0,
                    enc_util_pct=0.0,
                    dec_util_pct=0.0,
                    pcie_replays=g,
                    mem_reserved_bytes=_GPU_MEM_RESERVED,
                )
            )
        mean_util = total_util / self.gpus_per_node if self.gpus_per_node else p.base
        cpu_pct = min(100.0, 3.0 + mean_util * 0.25)
        mem_used = int(_NODE_MEM * (0.15 + 0.5 * mean_util / 100))
        cpu_w = round(180 + 3.2 * cpu_pct * 4, 1)
        node_w = None
        if self.reports_bmc[i]:
            node_w = sum(g.power_interval_w or 0.0 for g in gpus) + cpu_w + self.rest_w[i]
        return Sample(
            v=1,
            node=self.node_ids[i],
            ts=ts,
            seq=seq,
            epoch=self.epoch,
            interval_s=dt,
            cpu=CpuStats(
                count=_CPUS,
                pct=round(cpu_pct, 1),
                load1=round(cpu_pct * 2.2, 2),
                load5=round(cpu_pct * 2.1, 2),
                load15=round(cpu_pct * 2.0, 2),
            ),
            mem=MemStats(
                total_bytes=_NODE_MEM, used_bytes=mem_used, available_bytes=_NODE_MEM - mem_used
            ),
            disks=(
                DiskStats(
                    mount="/",
                    device="/dev/nvme0n1p2",
                    fstype="ext4",
                    total_bytes=1_900_000_000_000,
                    used_bytes=420_000_000_000,
                ),
            ),
            disk_io=DiskIoStats(
                read_bytes_per_s=2.0e6 * mean_util, write_bytes_per_s=5.0e5 * mean_util
            ),
            net=NetStats(rx_bytes_per_s=1.2e8 * mean_util, tx_bytes_per_s=1.1e8 * mean_util),
            cpu_power_w=cpu_w,
            node_power_w=node_w,
            node_power_source=None if node_w is None else "dcmi",
            gpus=tuple(gpus),
        )

    def next_seq(self) -> int:
        """The sequence number of the next tick (its samples' ``seq``); advances it."""
        seq = self._seq
        self._seq += 1
        return seq

    def tick(self, ts: float) -> Iterator[tuple[str, bytes]]:
        """(topic, payload) of every node for one tick at ``ts``; advances the sequence."""
        seq = self.next_seq()
        for i, node in enumerate(self.node_ids):
            yield sample_topic(node), encode(self.sample(i, ts, seq))


def _taken_when_sent(sim: FleetSimulator, i: int, seq: int) -> Callable[[], bytes]:
    """Node ``i``'s sample ``seq``, taken (its ``ts``) when the call makes it."""
    return lambda: encode(sim.sample(i, time.time(), seq))


async def publish_fleet(
    mqtt: MqttSettings,
    sim: FleetSimulator,
    *,
    ticks: int | None = None,
    burst: bool = False,
    spread: bool = False,
    workers: int = 256,
    stop: asyncio.Event | None = None,
    start_ts: float | None = None,
    client_id: str = "capwatch-simulator",
    stop_grace_s: float = STOP_GRACE_S,
) -> SimStats:
    """Publish inventories, ``online`` statuses, then samples every interval.

    ``burst``: no waiting between ticks; sample timestamps still step by the interval from
    ``start_ts`` (the benchmark uses this to offer load as fast as the broker takes it).
    ``spread`` (without ``burst``): each node samples and publishes at its own phase of the
    interval, node ``i`` at ``i / nodes`` of it, as agents started at different times do;
    otherwise every node publishes at the start of each interval, all at once. A spread
    sample is taken (its ``ts``) when it is made; how far behind its node's phase the
    simulator made one, at most, is ``SimStats.extra["max_late_s"]`` (the simulator, not
    the collector, fell behind).

    Like the agent, it outlives the broker once connected (the first connection failing is
    raised: a wrong address or password is the user's to fix): a lost connection is retried
    with the agent's backoff (:func:`agent.publisher.next_backoff`), messages that were in
    flight are sent again first (duplicates are harmless), and inventories and statuses are
    re-announced.
    Ticks go on being generated meanwhile, up to the bounded queue; then the generator
    waits for the broker (a simulated fleet has no spool). After ``stop``, what is left is
    sent for at most ``stop_grace_s`` (:data:`STOP_GRACE_S`), then given up.
    """
    stop = stop or asyncio.Event()
    stats = SimStats()
    queue: asyncio.Queue[tuple[str, bytes | Callable[[], bytes], bool]] = asyncio.Queue(
        maxsize=workers * 8
    )
    """(topic, payload or what makes it when it is sent, retain)."""
    retry: list[tuple[tuple[str, bytes, bool], bool]] = []
    """Messages a lost connection interrupted (and whether they came off the queue, which
    waits for their acknowledgement): sent first after a reconnect."""
    generated = asyncio.Event()
    t0 = time.monotonic()

    def announcements(status: str) -> list[tuple[str, bytes, bool]]:
        now = time.time()
        out: list[tuple[str, bytes, bool]] = []
        for i, node in enumerate(sim.node_ids):
            if status == "online":
                out.append((inventory_topic(node), encode(sim.inventory(i, now)), True))
            out.append(
                (
                    status_topic(node),
                    encode(NodeStatus(v=1, node=node, status=status, ts=now)),  # type: ignore[arg-type]
                    True,
                )
            )
        return out

    async def paced(start: float) -> None:
        # Node i is due at start + i * step (wall clock): sleep until then, every _PACE_S
        # of nodes. Its sample is taken as it is sent (a worker makes it), so a simulator
        # running late sends late samples, not old ones.
        seq = sim.next_seq()
        step = sim.interval_s / max(len(sim.node_ids), 1)
        every = max(1, math.ceil(_PACE_S / step))
        for i, node in enumerate(sim.node_ids):
            if i % every == 0:
                delay = start + i * step - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    stats.extra["max_late_s"] = max(stats.extra.get("max_late_s", 0.0), -delay)
            await queue.put((sample_topic(node), _taken_when_sent(sim, i, seq), False))

    async def produce() -> None:
        base_ts = start_ts if start_ts is not None else time.time()
        next_tick = time.monotonic()
        while not stop.is_set() and (ticks is None or stats.ticks < ticks):
            ts = base_ts + stats.ticks * sim.interval_s if burst else time.time()
            if spread and not burst:
                await paced(ts)
            else:
                for topic, payload in sim.tick(ts):
                    await queue.put((topic, payload, False))
            stats.ticks += 1
            if burst:
                continue
            next_tick += sim.interval_s
            delay = next_tick - time.monotonic()
            if delay < 0:
                stats.late_ticks += 1
                next_tick = time.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        await queue.join()
        for item in announcements("offline"):
            await queue.put(item)
        await queue.join()
        generated.set()

    async def connection(client: aiomqtt.Client) -> None:
        async def send(
            made: tuple[str, bytes | Callable[[], bytes], bool], from_queue: bool
        ) -> None:
            topic, payload, retain = made
            if callable(payload):
                payload = payload()  # made once: a resend after a reconnect is the same
            item = (topic, payload, retain)
            try:
                await client.publish(topic, payload, qos=1, retain=retain)
            except BaseException as exc:  # lost connection, or cancelled because of one
                stats.errors += isinstance(exc, aiomqtt.MqttError)
                retry.append((item, from_queue))
                raise
            stats.published += 0 if retain else 1
            if from_queue:
                queue.task_done()

        async def worker() -> None:
            while True:
                await send(await queue.get(), True)

        async def resend() -> None:
            # In-flight messages of the lost connection, then (re-)announce every node.
            pending = [*retry, *((item, False) for item in announcements("online"))]
            retry.clear()
            for k in range(0, len(pending), workers):
                try:
                    async with asyncio.TaskGroup() as tg:
                        for item, from_queue in pending[k : k + workers]:
                            tg.create_task(send(item, from_queue), name="sim-resend")
                except BaseException:
                    retry.extend(pending[k + workers :])
                    raise

        await resend()
        async with asyncio.TaskGroup() as tg:
            pool = [tg.create_task(worker(), name=f"sim-publisher-{k}") for k in range(workers)]
            await generated.wait()  # a worker's lost connection cancels this wait
            for task in pool:
                task.cancel()

    async def connect_forever() -> None:
        attempt = 0
        connected_once = False
        while True:
            try:
                async with aiomqtt.Client(
                    mqtt.host,
                    mqtt.port,
                    username=mqtt.username,
                    password=mqtt.password_value(),
                    identifier=client_id,
                    clean_session=True,
                    keepalive=mqtt.keepalive_s,
                    tls_context=mqtt.tls_context(),
                    max_inflight_messages=workers,
                    timeout=30,
                ) as client:
                    # Many publishes in flight is the point here, not a symptom.
                    client.pending_calls_threshold = workers + 1
                    attempt, connected_once = 0, True
                    await connection(client)
                    return
            except* aiomqtt.MqttError as group:
                if not connected_once or any(
                    refused_credentials(e)
                    for e in group.exceptions
                    if isinstance(e, aiomqtt.MqttError)
                ):
                    raise  # no broker there, or not these credentials: the user's to fix
                delay = next_backoff(attempt, mqtt.reconnect_min_s, mqtt.reconnect_max_s)
                attempt += 1
                stats.reconnects += 1
                log.warning(
                    "simulator_disconnected",
                    error=str(group.exceptions[0]),
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)

    async def cut_short(work: list[asyncio.Task[None]]) -> None:
        # A stop ends the run within stop_grace_s, sent or not (a simulated fleet has no
        # spool to keep the rest in).
        await stop.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(stop_grace_s):
                await generated.wait()
                return
        log.warning(
            "simulator_stopped_unsent", unsent=queue.qsize() + len(retry), grace_s=stop_grace_s
        )
        for task in work:
            task.cancel()

    async with asyncio.TaskGroup() as tg:
        work = [
            tg.create_task(produce(), name="sim-ticks"),
            tg.create_task(connect_forever(), name="sim-connection"),
        ]
        watch = tg.create_task(cut_short(work), name="sim-stop")
        await asyncio.wait(work)
        watch.cancel()
    stats.elapsed_s = time.monotonic() - t0
    return stats
