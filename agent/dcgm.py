"""The agent's GPU metric families: dcgm-exporter's names, labels and units.

Part of the agent's ``/metrics`` (:mod:`agent.metrics` serves them with the host and agent
families). Metrics use **dcgm-exporter's names, labels and units** (``DCGM_FI_DEV_POWER_USAGE``
in W, ``DCGM_FI_DEV_FB_USED`` in MiB, ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` in mJ, ...;
labels ``gpu``, ``UUID``, ``pci_bus_id``, ``device``, ``modelName``, ``Hostname`` (or
``hostname``, as dcgm-exporter's main branch spells it: the ``dcgm_hostname_label``
setting), ``DCGM_FI_DRIVER_VERSION``), so dashboards built for dcgm-exporter work unchanged.
dcgm-exporter types its counters ``counter`` without the ``_total`` suffix that
prometheus_client adds to every counter; to keep the exact names those families are
exposed untyped (PromQL's ``rate()`` reads them the same).

A field the device does not report (``None``) is left out, as dcgm-exporter leaves out
blank fields: absent, never 0.

NVLink: ``DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL`` (in dcgm-exporter's default counters) is,
as DCGM computes it, the GPU's NVLink data sent and received over the interval in KiB/s
divided by 1000, truncated (DCGM's ``ReadAndCacheNvLinkBandwidth``; typed ``counter`` by
dcgm-exporter although it is a rate). ``DCGM_FI_PROF_NVLINK_TX_BYTES`` / ``_RX_BYTES``, the
profiling fields dashboards draw NVLink traffic from, are each direction in bytes/s; NVML
has no profiling counters, so its data counters stand in (payload only, where DCGM's count
protocol headers too) and the help text says so.

MIG: a GPU in MIG mode has, besides its own series, one set per GPU instance labelled as
dcgm-exporter labels them, ``GPU_I_PROFILE`` (``1g.10gb``) and ``GPU_I_ID`` after
``modelName``, with the GPU's ``gpu`` and ``UUID``: framebuffer used, free and total, once
per job with a process in that GPU instance (``hpc_job``, or ``pod`` ...). NVML
gives no utilisation for MIG devices (nor for their GPU in MIG mode), so
``DCGM_FI_DEV_GPU_UTIL`` is absent there, as dcgm-exporter documents; DCGM's profiling
fields (``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` per instance) need DCGM itself. Compute instances
of one GPU instance share its memory: the series are per GPU instance, as dcgm-exporter's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

from prometheus_client.core import Metric

from shared.schema import (
    GpuEcc,
    GpuInfo,
    GpuProcess,
    GpuRemappedRows,
    GpuSample,
    Inventory,
    Job,
    MigSample,
    Sample,
)

__all__ = ["DCGM_LABELS", "HostnameLabel", "dcgm_families", "dcgm_labels"]

DCGM_LABELS: Final = (
    "gpu",
    "UUID",
    "pci_bus_id",
    "device",
    "modelName",
    "Hostname",
    "DCGM_FI_DRIVER_VERSION",
)
"""dcgm-exporter's label set on every ``DCGM_FI_*`` series, in its order (its releases so
far; its main branch spells the host label ``hostname``: see :func:`dcgm_labels`)."""

HostnameLabel = Literal["Hostname", "hostname"]
"""The two spellings of dcgm-exporter's host label: ``Hostname`` (its releases up to now) and
``hostname`` (its main branch). The agent's ``dcgm_hostname_label`` setting picks one."""


def dcgm_labels(hostname_label: HostnameLabel = "Hostname") -> tuple[str, ...]:
    """:data:`DCGM_LABELS` with the host label spelled ``hostname_label``."""
    return tuple(hostname_label if k == "Hostname" else k for k in DCGM_LABELS)


_MIB: Final = 1024 * 1024


class _Dcgm:
    """One ``DCGM_FI_*`` family being filled: name, dcgm type, help text as dcgm words it."""

    __slots__ = ("metric",)

    def __init__(self, name: str, kind: str, doc: str) -> None:
        # prometheus_client writes "unknown" as "untyped" in the text format.
        self.metric = Metric(name, doc, "gauge" if kind == "gauge" else "unknown")

    def add(self, label_sets: list[dict[str, str]], value: float | None) -> None:
        if value is not None:
            for labels in label_sets:
                self.metric.add_sample(self.metric.name, labels, float(value))


def _gpu_info(inventory: Inventory | None, uuid: str) -> GpuInfo | None:
    if inventory is None:
        return None
    return next((g for g in inventory.gpus if g.uuid == uuid), None)


def _gpu_labels(
    gpu: GpuSample, info: GpuInfo | None, inventory: Inventory | None, hostname: HostnameLabel
) -> dict[str, str]:
    return {
        "gpu": str(gpu.index),
        "UUID": gpu.uuid,
        "pci_bus_id": (info.pci_bus_id or "") if info is not None else "",
        # dcgm-exporter's device is /dev/nvidia<minor>; NVML's minor equals the index on
        # every system we know of, and the wire schema does not carry the minor.
        "device": f"nvidia{gpu.index}",
        "modelName": info.name if info is not None else "",
        hostname: inventory.host if inventory is not None else "",
        "DCGM_FI_DRIVER_VERSION": (inventory.gpu_driver or "") if inventory is not None else "",
    }


def _mig_labels(base: dict[str, str], mig: MigSample, hostname: str) -> dict[str, str]:
    """``base`` with dcgm-exporter's MIG labels inserted before the host label, its order."""
    out: dict[str, str] = {}
    for key, value in base.items():
        if key == hostname:
            out["GPU_I_PROFILE"] = mig.profile or ""
            out["GPU_I_ID"] = str(mig.gi_id)
        out[key] = value
    return out


def _owner_labels(processes: Iterable[GpuProcess], jobs: dict[str, Job]) -> list[dict[str, str]]:
    """dcgm-exporter's attribution labels of the jobs of ``processes`` (a GPU's, or a GPU
    instance's), one set per job: ``hpc_job`` for a Slurm job (as its HPC job mapping adds),
    ``pod``, ``namespace``, ``container`` for a pod (as its kubelet pod-resources mapping
    adds). A GPU shared by several jobs has its series once per job, as dcgm-exporter
    repeats them; none: no set (no extra labels)."""
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for p in processes:
        if p.job is None or (p.job, p.container or "") in seen:
            continue
        seen.add((p.job, p.container or ""))
        info = jobs.get(p.job)
        if info is not None and info.scheduler == "kubernetes":
            out.append(
                {
                    "pod": info.name or p.job,
                    "namespace": info.namespace or "",
                    "container": p.container or "",
                }
            )
        else:
            out.append({"hpc_job": p.job})
    return out


def _mib(value: int | None) -> int | None:
    """Whole MiB, as DCGM reports framebuffer memory (an integer field)."""
    return None if value is None else value // _MIB


def dcgm_families(
    sample: Sample,
    inventory: Inventory | None,
    *,
    last_xid: dict[int, int] | None = None,
    ecc: dict[int, GpuEcc] | None = None,
    remapped: dict[int, GpuRemappedRows] | None = None,
    hostname_label: HostnameLabel = "Hostname",
) -> list[Metric]:
    """The GPU part of ``sample`` under dcgm-exporter's names, labels and units.

    ``last_xid``, ``ecc`` and ``remapped`` are per GPU index, carried over from earlier
    samples (a sample has XIDs only when one happened, ECC and rows only on slow ticks).
    ``hostname_label``: how the host label is spelled.
    """
    last_xid = last_xid or {}
    ecc = ecc or {}
    remapped = remapped or {}
    f = {
        "sm_clock": _Dcgm("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
        "mem_clock": _Dcgm("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
        "mem_temp": _Dcgm("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
        "temp": _Dcgm("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
        "power": _Dcgm("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
        "energy": _Dcgm(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "counter",
            "Total energy consumption since boot (in mJ).",
        ),
        "replays": _Dcgm(
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."
        ),
        "util": _Dcgm("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
        "mem_util": _Dcgm("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
        "enc_util": _Dcgm("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %)."),
        "dec_util": _Dcgm("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %)."),
        # NVIDIA's dcgm-exporter dashboard draws utilisation from this profiling field, which
        # NVML lacks; NVML's kernel-active share of time is the nearest figure, so it stands in
        # (as a ratio, like the field) and says so in its help text.
        "gr_active": _Dcgm(
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
            "gauge",
            "Ratio of time the graphics engine is active (capwatch: NVML's utilization / 100, "
            "an approximation of DCGM's profiling counter).",
        ),
        "xid": _Dcgm("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
        "fb_free": _Dcgm("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
        "fb_used": _Dcgm("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
        "fb_total": _Dcgm("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB)."),
        # Not in dcgm-exporter's default counters, but DCGM's field of that name (NVML's v2
        # memory info), which dcgm-exporter exports when a counters file lists it.
        "fb_reserved": _Dcgm(
            "DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB)."
        ),
        "pstate": _Dcgm("DCGM_FI_DEV_PSTATE", "gauge", "Performance state (P-State) 0-15."),
        # DCGM 3.3 renamed the field (NVML's "throttle" became "clock event"); dcgm-exporter
        # exports the new name. The old one stays for one release (README: Deprecated).
        "reasons": _Dcgm(
            "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", "Current clock event reasons."
        ),
        "reasons_old": _Dcgm(
            "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
            "gauge",
            "Current clock throttle reasons (deprecated: DCGM_FI_DEV_CLOCKS_EVENT_REASONS).",
        ),
        "limit": _Dcgm(
            "DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "gauge", "Effective power limit (in W)."
        ),
        "sbe_vol": _Dcgm(
            "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
            "counter",
            "Total number of single-bit volatile ECC errors.",
        ),
        "dbe_vol": _Dcgm(
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
            "counter",
            "Total number of double-bit volatile ECC errors.",
        ),
        "sbe_agg": _Dcgm(
            "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
            "counter",
            "Total number of single-bit persistent ECC errors.",
        ),
        "dbe_agg": _Dcgm(
            "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
            "counter",
            "Total number of double-bit persistent ECC errors.",
        ),
        "rows_unc": _Dcgm(
            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
            "counter",
            "Number of remapped rows for uncorrectable errors",
        ),
        "rows_cor": _Dcgm(
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
            "counter",
            "Number of remapped rows for correctable errors",
        ),
        "rows_fail": _Dcgm(
            "DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed"
        ),
        "rows_pending": _Dcgm(
            "DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "Whether remapping of rows is pending"
        ),
        "nvlink_total": _Dcgm(
            "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
            "counter",
            "Total number of NVLink bandwidth counters for all lanes.",
        ),
        "nvlink_tx": _Dcgm(
            "DCGM_FI_PROF_NVLINK_TX_BYTES",
            "gauge",
            "The rate of data transmitted over NVLink, in bytes per second (capwatch: NVML's "
            "data counters, payload only; DCGM's profiling field counts protocol headers too).",
        ),
        "nvlink_rx": _Dcgm(
            "DCGM_FI_PROF_NVLINK_RX_BYTES",
            "gauge",
            "The rate of data received over NVLink, in bytes per second (capwatch: NVML's "
            "data counters, payload only; DCGM's profiling field counts protocol headers too).",
        ),
    }
    f["interval"] = _Dcgm(
        "capwatch_gpu_power_interval_watts",
        "gauge",
        "Mean GPU power over the last sampling interval, from the energy counter (W); "
        "more accurate than DCGM_FI_DEV_POWER_USAGE, which is a short-window reading.",
    )
    jobs = {j.id: j for j in sample.jobs}
    for gpu in sample.gpus:
        info = _gpu_info(inventory, gpu.uuid)
        base = _gpu_labels(gpu, info, inventory, hostname_label)
        owners = _owner_labels(gpu.processes, jobs) if gpu.processes else []
        labels = [{**base, **o} for o in owners] if owners else [base]
        f["sm_clock"].add(labels, gpu.sm_clock_mhz)
        f["mem_clock"].add(labels, gpu.mem_clock_mhz)
        f["mem_temp"].add(labels, gpu.mem_temp_c)
        f["temp"].add(labels, gpu.temp_c)
        f["power"].add(labels, gpu.power_w)
        f["energy"].add(labels, None if gpu.energy_j is None else gpu.energy_j * 1000.0)
        f["replays"].add(labels, gpu.pcie_replays)
        f["util"].add(labels, gpu.util_pct)
        f["mem_util"].add(labels, gpu.mem_util_pct)
        f["enc_util"].add(labels, gpu.enc_util_pct)
        f["dec_util"].add(labels, gpu.dec_util_pct)
        f["gr_active"].add(labels, None if gpu.util_pct is None else gpu.util_pct / 100.0)
        f["xid"].add(labels, last_xid.get(gpu.index, 0))
        f["fb_used"].add(labels, _mib(gpu.mem_used_bytes))
        f["fb_total"].add(labels, _mib(gpu.mem_total_bytes))
        f["fb_reserved"].add(labels, _mib(gpu.mem_reserved_bytes))
        if gpu.mem_used_bytes is not None and gpu.mem_total_bytes is not None:
            # NVML's total includes the driver's reservation: NVML's free (v2) leaves it out.
            # Without the v2 reading (drivers before R510) it is unknown and counts as free.
            reserved = gpu.mem_reserved_bytes or 0
            free = gpu.mem_total_bytes - reserved - gpu.mem_used_bytes
            f["fb_free"].add(labels, _mib(max(0, free)))
        f["pstate"].add(labels, gpu.pstate)
        f["reasons"].add(labels, gpu.clock_event_reasons)
        f["reasons_old"].add(labels, gpu.clock_event_reasons)
        f["limit"].add(labels, None if info is None else info.power_limit_w)
        e = gpu.ecc or ecc.get(gpu.index)
        if e is not None:
            f["sbe_vol"].add(labels, e.corrected_volatile)
            f["dbe_vol"].add(labels, e.uncorrected_volatile)
            f["sbe_agg"].add(labels, e.corrected_aggregate)
            f["dbe_agg"].add(labels, e.uncorrected_aggregate)
        r = gpu.remapped_rows or remapped.get(gpu.index)
        if r is not None:
            f["rows_unc"].add(labels, r.uncorrectable)
            f["rows_cor"].add(labels, r.correctable)
            f["rows_fail"].add(labels, int(r.failure))
            f["rows_pending"].add(labels, int(r.pending))
        f["interval"].add(labels, gpu.power_interval_w)
        nv = gpu.nvlink
        if nv is not None:
            f["nvlink_tx"].add(labels, nv.tx_bytes_per_s)
            f["nvlink_rx"].add(labels, nv.rx_bytes_per_s)
            if nv.tx_bytes_per_s is not None and nv.rx_bytes_per_s is not None:
                # DCGM's figure: KiB/s of both directions / 1000, truncated.
                kib_s = (nv.tx_bytes_per_s + nv.rx_bytes_per_s) / 1024
                f["nvlink_total"].add(labels, int(kib_s / 1000))
        seen: set[int] = set()
        for mig in gpu.mig:
            if mig.gi_id in seen:  # another compute instance of the same GPU instance
                continue
            seen.add(mig.gi_id)
            mbase = _mig_labels(base, mig, hostname_label)
            inside = [p for p in gpu.processes if p.gi_id == mig.gi_id]
            mowners = _owner_labels(inside, jobs) if inside else []
            mlabels = [{**mbase, **o} for o in mowners] if mowners else [mbase]
            f["fb_used"].add(mlabels, _mib(mig.mem_used_bytes))
            f["fb_total"].add(mlabels, _mib(mig.mem_total_bytes))
            if mig.mem_used_bytes is not None and mig.mem_total_bytes is not None:
                f["fb_free"].add(mlabels, _mib(max(0, mig.mem_total_bytes - mig.mem_used_bytes)))
            f["util"].add(mlabels, mig.util_pct)
            f["gr_active"].add(mlabels, None if mig.util_pct is None else mig.util_pct / 100.0)
    return [d.metric for d in f.values() if d.metric.samples]
