"""A node's inventory and samples: the host, RAPL and GPU parts assembled on the wire schema."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import msgspec

from agent.bounds import Bounds
from agent.gpu import GpuBackend, NullGpuBackend, NvmlBackend
from agent.hardware import PciNames, nic_details, read_hardware
from agent.host import HostSampler
from agent.jobs import Attribution, JobAttributor
from agent.nodepower import NodePower
from agent.rapl import RaplReader
from shared.clock import Clock
from shared.logging import get_logger
from shared.schema import (
    MAX_HOSTNAME_LEN,
    MAX_INTERVAL_S,
    MAX_JOBS,
    MAX_VERSION_LEN,
    MIN_INTERVAL_S,
    GpuProcess,
    GpuSample,
    Inventory,
    Job,
    Sample,
)
from shared.topics import validate_node_id

__all__ = ["NodeSampler", "agent_version", "make_gpu_backend"]


def agent_version() -> str:
    """The installed capwatch version, ``0+unknown`` when running from an uninstalled tree."""
    try:
        return version("capwatch")
    except PackageNotFoundError:
        return "0+unknown"


class NodeSampler:
    """Builds the node's :class:`Inventory` once and a :class:`Sample` per tick.

    :meth:`sample` blocks on file reads and NVML calls (about a millisecond): the service
    calls it through ``asyncio.to_thread``, from one thread at a time. Every
    ``slow_interval_s`` (and on the first sample) the GPU part includes ECC counters and
    remapped rows. Every part keeps its readings inside the wire schema's bounds
    (:mod:`agent.bounds`), so one broken sensor never gets a whole sample rejected.

    ``jobs``: attributes the GPUs' processes to Slurm jobs and pods (:mod:`agent.jobs`); it
    answers from its cache, so a process is attributed from the tick after it was first seen.
    """

    def __init__(
        self,
        node_id: str,
        *,
        gpu: GpuBackend,
        rapl: RaplReader | None,
        host: HostSampler,
        interval_s: float,
        slow_interval_s: float,
        clock: Clock,
        pci_ids: Sequence[Path] | None = None,
        node_power: NodePower | None = None,
        jobs: JobAttributor | None = None,
    ) -> None:
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise ValueError(
                f"interval_s must be within {MIN_INTERVAL_S}..{MAX_INTERVAL_S}, got {interval_s}"
            )
        if slow_interval_s <= 0:
            raise ValueError(f"slow_interval_s must be positive, got {slow_interval_s}")
        self._node = validate_node_id(node_id)
        self._gpu = gpu
        self._rapl = rapl
        self._host = host
        self._interval_s = interval_s
        self._slow_interval_s = slow_interval_s
        self._clock = clock
        self._jobs = jobs
        self._pci_names = PciNames() if pci_ids is None else PciNames(pci_ids)
        self._bounds = Bounds(clock, get_logger("agent.node"))
        self._started = False
        self._seq = 0
        self.epoch: int | None = None
        """The agent's boot counter, stamped on every sample (set once the spool is open)."""
        self._slow_due = float("-inf")
        self.node_power = node_power
        """The node's input power, polled in its own task (the service runs it)."""

    def start(self) -> Inventory:
        """Start the GPU backend and describe the node. Call once, before :meth:`sample`."""
        if self._started:
            raise RuntimeError("NodeSampler.start() was already called")
        self._started = True
        gpus = self._gpu.start()
        info = self._host.info()
        hw = read_hardware(
            self._host.proc_root,
            self._host.sysfs_root,
            nvml_bus_ids=[g.pci_bus_id for g in gpus.gpus if g.pci_bus_id],
            bounds=self._bounds,
            names=self._pci_names,
        )
        nics = []
        for nic in info.nics:
            model, up = nic_details(self._host.sysfs_root, nic.name, self._pci_names)
            nics.append(msgspec.structs.replace(nic, model=model, up=up))
        return Inventory(
            v=1,
            node=self._node,
            ts=self._clock.time(),
            host=self._bounds.text(socket.gethostname(), "host", MAX_HOSTNAME_LEN, empty="unknown"),
            agent_version=self._bounds.text(
                agent_version(), "agent_version", MAX_VERSION_LEN, empty="unknown"
            ),
            cpu_model=info.cpu_model,
            cpu_count=info.cpu_count,
            cpu_cores=info.cpu_cores,
            mem_total_bytes=info.mem_total_bytes,
            gpus=gpus.gpus,
            gpu_driver=gpus.driver,
            gpu_status=gpus.status,
            nics=nics,
            cpus=hw.cpus,
            mem_installed_bytes=hw.mem_installed_bytes,
            mem_dimms=hw.mem_dimms,
            accelerators=hw.accelerators,
        )

    def sample(self) -> Sample:
        """Read everything once. Rates are ``None`` on the first sample."""
        if not self._started:
            raise RuntimeError("NodeSampler.start() must be called before sample()")
        now = self._clock.monotonic()
        ts = self._clock.time()
        # Due within half an interval counts as due, so scheduling jitter cannot push the
        # slow reads a whole interval late.
        slow = now >= self._slow_due - self._interval_s / 2
        if slow:
            self._slow_due = now + self._slow_interval_s
        host = self._host.sample()
        cpu_power_w = self._rapl.sample() if self._rapl is not None else None
        gpus = self._gpu.sample(now, slow)
        node_power = self.node_power.latest() if self.node_power is not None else None
        jobs: tuple[Job, ...] = ()
        if self._jobs is not None:
            gpus, jobs = self._attribute(gpus, self._jobs)
        sample = Sample(
            v=1,
            node=self._node,
            ts=ts,
            seq=self._seq,
            epoch=self.epoch,
            interval_s=self._interval_s,
            cpu=host.cpu,
            mem=host.mem,
            disks=tuple(host.disks),
            disk_io=host.disk_io,
            net=host.net,
            cpu_power_w=cpu_power_w,
            node_power_w=None if node_power is None else node_power[0],
            node_power_source=None if node_power is None else node_power[1],
            gpus=tuple(gpus),
            xids=tuple(self._gpu.drain_xids()),
            jobs=jobs,
        )
        self._seq += 1
        return sample

    def _attribute(
        self, gpus: list[GpuSample], attributor: JobAttributor
    ) -> tuple[list[GpuSample], tuple[Job, ...]]:
        """The GPUs with their processes' owners filled in, and those owners' jobs."""
        owners = attributor.lookup({p.pid for g in gpus for p in g.processes})
        if not owners:
            return gpus, ()
        jobs: dict[str, Job] = {}
        out = []
        for g in gpus:
            procs = g.processes
            if not procs:
                out.append(g)
                continue
            attributed = tuple(_attributed(p, owners.get(p.pid), jobs) for p in procs)
            out.append(msgspec.structs.replace(g, processes=attributed))
        listed = tuple(jobs.values())
        if len(listed) > MAX_JOBS:
            self._bounds.truncated("jobs", kept=MAX_JOBS, dropped=len(listed) - MAX_JOBS)
            listed = listed[:MAX_JOBS]
        return out, listed

    def close(self) -> None:
        """Release the GPU backend (stops its XID thread) and the job attribution's worker.
        Idempotent."""
        self._gpu.close()
        if self._jobs is not None:
            self._jobs.close()


def _attributed(p: GpuProcess, a: Attribution | None, jobs: dict[str, Job]) -> GpuProcess:
    if a is None:
        return p
    info = a.info
    if info is not None:
        seen = jobs.get(info.id)
        if seen is None:
            jobs[info.id] = info
        elif info.started is not None and (seen.started is None or info.started < seen.started):
            # The job started when its first process on this node's GPUs did.
            jobs[info.id] = msgspec.structs.replace(seen, started=info.started)
    return msgspec.structs.replace(p, user=a.user, job=a.job, step=a.step, container=a.container)


def make_gpu_backend(
    kind: Literal["nvml", "fake", "none"],
    *,
    fake_gpus: int = 8,
    fake_mig: Mapping[int, Sequence[str]] | None = None,
    seed: int = 0,
    clock: Clock,
) -> GpuBackend:
    """The GPU backend named by ``AgentSettings.gpu_backend``.

    ``fake`` is NVML's code path over :class:`FakeNvml` (8 x H100 by default, profile fixed
    by ``seed``; ``fake_mig``: GPU index -> the GPU instance profiles created on it); ``none``
    reports zero GPUs with status ``disabled``.
    """
    if kind == "nvml":
        return NvmlBackend(clock=clock)
    if kind == "fake":
        # Test harness: imported only when asked for, never at a real node's start.
        from agent.fake_nvml import FakeNvml  # noqa: PLC0415

        nvml = FakeNvml(fake_gpus, seed=seed, clock=clock, mig=fake_mig)
        return NvmlBackend(nvml, clock=clock)
    if kind == "none":
        return NullGpuBackend()
    raise ValueError(f"unknown GPU backend {kind!r}: use 'nvml', 'fake' or 'none'")
