"""The agent's /metrics: dcgm-exporter's names, labels and units, field by field, from a
sample the fake NVML produced; node_exporter's host names; promtool accepts the text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.dcgm import DCGM_LABELS, dcgm_labels
from agent.fake_nvml import FakeNvml
from agent.metrics import AgentExposition, AgentStats, advertised_address
from agent.node import NodeSampler
from shared.clock import FakeClock
from shared.schema import GpuEcc, GpuProcess, Inventory, Job, Sample, XidEvent
from tests.agent.helpers import node_sampler, rapl_zone
from tests.agent.test_host import FakeHost
from tests.helpers import promtool_check_metrics

_POD = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_STATS = AgentStats(
    samples_taken=3,
    published=2,
    dropped=3,
    buffered=1,
    connected=True,
    last_ack_age_s=0.5,
    lost={"full": 2, "torn": 1},
    spool_bytes=4096,
    epoch=7,
)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[NodeSampler, FakeClock, FakeNvml]]:
    """A node sampler over a fake /proc, /sys (one RAPL zone) and 4 fake H100s."""
    clock = FakeClock()
    host = FakeHost(tmp_path)
    rapl_zone(host.sys)
    nvml = FakeNvml(4, clock=clock, seed=3)
    sampler = node_sampler(host, clock, nvml, rapl=True)
    yield sampler, clock, nvml
    sampler.close()


def _two_samples(sampler: NodeSampler, clock: FakeClock) -> tuple[Inventory, Sample]:
    inventory = sampler.start()
    sampler.sample()
    clock.advance(5.0)
    return inventory, sampler.sample()  # the second has interval power and rates


def _scrape(expo: AgentExposition) -> tuple[str, Series]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(expo)
    text = generate_latest(registry).decode()
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            series[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, series


def _labels(series: Series, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in series if n == name]


def _value(series: Series, name: str, gpu: int) -> float:
    hits = [v for (n, labels), v in series.items() if n == name and ("gpu", str(gpu)) in labels]
    assert len(hits) == 1, f"{name} for gpu {gpu}: {len(hits)} series"
    return hits[0]


def test_every_dcgm_field_carries_the_samples_value_in_dcgm_units(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """Each DCGM_FI_* series equals the fake NVML sample's field converted to dcgm-exporter's
    unit: W, mJ, MiB, MHz, %, C; the interval power is capwatch's own, in W."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    expo.update(sample)
    _, series = _scrape(expo)
    mib = 1024 * 1024
    assert len(sample.gpus) == 4
    for g in sample.gpus:
        info = inventory.gpus[g.index]
        assert g.power_w is not None
        assert g.energy_j is not None
        assert g.mem_used_bytes is not None
        assert g.mem_total_bytes is not None
        assert g.power_interval_w is not None
        assert g.mem_reserved_bytes is not None
        expected = {
            "DCGM_FI_DEV_GPU_UTIL": g.util_pct,
            "DCGM_FI_DEV_MEM_COPY_UTIL": g.mem_util_pct,
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE": None if g.util_pct is None else g.util_pct / 100,
            "DCGM_FI_DEV_POWER_USAGE": g.power_w,
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": g.energy_j * 1000.0,
            "DCGM_FI_DEV_GPU_TEMP": g.temp_c,
            "DCGM_FI_DEV_SM_CLOCK": g.sm_clock_mhz,
            "DCGM_FI_DEV_FB_USED": g.mem_used_bytes // mib,  # whole MiB, as DCGM
            "DCGM_FI_DEV_FB_TOTAL": g.mem_total_bytes // mib,
            "DCGM_FI_DEV_FB_FREE": (g.mem_total_bytes - g.mem_reserved_bytes - g.mem_used_bytes)
            // mib,
            "DCGM_FI_DEV_FB_RESERVED": g.mem_reserved_bytes // mib,
            "DCGM_FI_DEV_MEM_CLOCK": g.mem_clock_mhz,
            "DCGM_FI_DEV_MEMORY_TEMP": g.mem_temp_c,
            "DCGM_FI_DEV_ENC_UTIL": g.enc_util_pct,
            "DCGM_FI_DEV_DEC_UTIL": g.dec_util_pct,
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": g.pcie_replays,
            "DCGM_FI_DEV_PSTATE": g.pstate,
            "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": g.clock_event_reasons,
            "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": g.clock_event_reasons,  # old name, one release
            "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": info.power_limit_w,
            "DCGM_FI_DEV_XID_ERRORS": 0,
            "capwatch_gpu_power_interval_watts": g.power_interval_w,
        }
        for name, want in expected.items():
            assert want is not None, name
            assert _value(series, name, g.index) == pytest.approx(want), name
    # the sample's values are real readings, not zeros that would match anything
    assert {_value(series, "DCGM_FI_DEV_POWER_USAGE", i) > 0 for i in range(4)} == {True}
    # the fake's own figures, so a field read from the wrong call cannot pass
    assert [_value(series, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", i) for i in range(4)] == [0, 1, 2, 3]
    assert {_value(series, "DCGM_FI_DEV_MEM_CLOCK", i) for i in range(4)} == {2619}
    assert {_value(series, "DCGM_FI_DEV_FB_RESERVED", i) for i in range(4)} == {512}
    for i in range(4):
        enc = _value(series, "DCGM_FI_DEV_ENC_UTIL", i)
        dec = _value(series, "DCGM_FI_DEV_DEC_UTIL", i)
        temp = _value(series, "DCGM_FI_DEV_GPU_TEMP", i)
        assert 0 < enc < dec < 100
        assert 30 < _value(series, "DCGM_FI_DEV_MEMORY_TEMP", i) != temp


def test_new_dcgm_fields_have_dcgm_exporters_types(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """Memory clock and temperature, encoder/decoder utilisation and reserved framebuffer are
    gauges; the PCIe replay counter is a dcgm counter, exposed untyped under its exact name."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    expo.update(sample)
    text, _ = _scrape(expo)
    for name in (
        "DCGM_FI_DEV_MEM_CLOCK",
        "DCGM_FI_DEV_MEMORY_TEMP",
        "DCGM_FI_DEV_ENC_UTIL",
        "DCGM_FI_DEV_DEC_UTIL",
        "DCGM_FI_DEV_FB_RESERVED",
    ):
        assert f"# TYPE {name} gauge\n" in text, name
    assert "# TYPE DCGM_FI_DEV_PCIE_REPLAY_COUNTER untyped\n" in text
    assert "DCGM_FI_DEV_PCIE_REPLAY_COUNTER_total" not in text


def test_dcgm_series_carry_dcgm_exporters_labels_from_the_inventory(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """gpu, UUID, pci_bus_id, device, modelName, Hostname, DCGM_FI_DRIVER_VERSION: as
    dcgm-exporter sets them, from the inventory the agent publishes."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    expo.update(sample)
    _, series = _scrape(expo)
    labels = sorted(_labels(series, "DCGM_FI_DEV_GPU_TEMP"), key=lambda d: d["gpu"])
    assert [set(d) for d in labels] == [set(DCGM_LABELS)] * 4
    for d, info in zip(labels, inventory.gpus, strict=True):
        assert d == {
            "gpu": str(info.index),
            "UUID": info.uuid,
            "pci_bus_id": info.pci_bus_id,
            "device": f"nvidia{info.index}",
            "modelName": "NVIDIA H100 80GB HBM3",
            "Hostname": inventory.host,
            "DCGM_FI_DRIVER_VERSION": "550.54.15",
        }


def test_gpus_of_jobs_carry_dcgm_exporters_hpc_job_and_pod_labels(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """GPU 0: Slurm job 4242 (``hpc_job``); GPU 1 shared by 4242 and a pod's container: its
    series twice, once per job (as dcgm-exporter repeats them); GPUs 2-3: no extra labels."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    g = list(sample.gpus)
    g[0] = msgspec.structs.replace(g[0], processes=(GpuProcess(pid=7, job="4242", step="0"),))
    g[1] = msgspec.structs.replace(
        g[1],
        processes=(
            GpuProcess(pid=7, job="4242"),
            GpuProcess(pid=8, job=_POD, container="pytorch"),
            GpuProcess(pid=9, job=_POD, container="pytorch"),
        ),
    )
    g[2] = msgspec.structs.replace(g[2], processes=(GpuProcess(pid=10),))
    jobs = (
        Job(id="4242", scheduler="slurm"),
        Job(id=_POD, scheduler="kubernetes", namespace="ml-team", name="trainer-7f9c"),
    )
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    expo.update(msgspec.structs.replace(sample, gpus=tuple(g), jobs=jobs))
    text, series = _scrape(expo)
    extra = {"hpc_job", "pod", "namespace", "container"}
    for name in ("DCGM_FI_DEV_GPU_UTIL", "capwatch_gpu_power_interval_watts"):
        owners = sorted(
            (d["gpu"], sorted((k, v) for k, v in d.items() if k in extra))
            for d in _labels(series, name)
        )
        assert owners == [
            ("0", [("hpc_job", "4242")]),
            ("1", [("container", "pytorch"), ("namespace", "ml-team"), ("pod", "trainer-7f9c")]),
            ("1", [("hpc_job", "4242")]),
            ("2", []),
            ("3", []),
        ], name
    rc, problems = promtool_check_metrics(text)
    assert rc in (0, 3), problems  # 3: the camelCase lint remarks of the test above only


def test_the_host_label_can_be_spelled_as_dcgm_exporters_main_branch_does(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """hostname_label="hostname": every GPU series, capwatch's interval power too, carries
    ``hostname`` with the inventory's host and no ``Hostname``."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    expo = AgentExposition(lambda: _STATS, hostname_label="hostname")
    expo.inventory = inventory
    expo.update(sample)
    _, series = _scrape(expo)
    for name in ("DCGM_FI_DEV_GPU_TEMP", "capwatch_gpu_power_interval_watts"):
        labels = _labels(series, name)
        assert len(labels) == 4, name
        assert [set(d) for d in labels] == [set(dcgm_labels("hostname"))] * 4
        assert {d["hostname"] for d in labels} == {inventory.host}
        assert all("Hostname" not in d for d in labels)


def test_xid_shows_the_last_code_per_gpu_and_stays_after_later_samples(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """DCGM_FI_DEV_XID_ERRORS is the value of the last XID (dcgm's meaning), held after the
    sample that carried it; ECC counters from a slow tick are held the same way."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    ecc = GpuEcc(corrected_volatile=5, uncorrected_volatile=1)
    first = msgspec.structs.replace(
        sample,
        xids=[
            XidEvent(gpu_index=2, xid=48, ts=sample.ts),
            XidEvent(gpu_index=2, xid=79, ts=sample.ts),
        ],
        gpus=[msgspec.structs.replace(g, ecc=ecc if g.index == 1 else None) for g in sample.gpus],
    )
    expo.update(first)
    later = msgspec.structs.replace(
        sample, xids=[], gpus=[msgspec.structs.replace(g, ecc=None) for g in sample.gpus]
    )
    expo.update(later)
    _, series = _scrape(expo)
    assert _value(series, "DCGM_FI_DEV_XID_ERRORS", 2) == 79
    assert _value(series, "DCGM_FI_DEV_XID_ERRORS", 0) == 0
    assert _value(series, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 1) == 5
    assert _value(series, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 1) == 1
    assert _labels(series, "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL") == []  # None: absent, not 0


def test_an_unsupported_field_is_absent_not_zero(tmp_path: Path) -> None:
    """A GPU whose NVML does not report power has no DCGM_FI_DEV_POWER_USAGE series; the
    other GPU has one."""
    clock = FakeClock()
    host = FakeHost(tmp_path)
    nvml = FakeNvml(2, clock=clock, unsupported={1: ["nvmlDeviceGetPowerUsage"]})
    sampler = node_sampler(host, clock, nvml, node="n2")
    try:
        inventory, sample = _two_samples(sampler, clock)
    finally:
        sampler.close()
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    expo.update(sample)
    _, series = _scrape(expo)
    assert [d["gpu"] for d in _labels(series, "DCGM_FI_DEV_POWER_USAGE")] == ["0"]
    assert len(_labels(series, "DCGM_FI_DEV_GPU_TEMP")) == 2
    assert len(_labels(series, "DCGM_FI_DEV_MEMORY_TEMP")) == 2
    assert ("capwatch_node_cpu_power_watts", ()) not in series  # no RAPL reader


def test_host_metrics_use_node_exporter_names_and_units(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """Load, memory and filesystem under node_exporter's names, bytes not kB; the agent's
    own counters under capwatch_agent_*."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    expo.update(sample)
    _, series = _scrape(expo)
    assert series[("node_load1", ())] == 0.5
    assert series[("node_load15", ())] == 2.0
    assert series[("node_memory_MemTotal_bytes", ())] == 16_000_000 * 1024
    assert series[("node_memory_MemAvailable_bytes", ())] == 12_000_000 * 1024
    assert series[("node_memory_SwapFree_bytes", ())] == 3_000_000 * 1024
    assert sample.cpu_power_w is not None
    assert series[("capwatch_node_cpu_power_watts", ())] == pytest.approx(sample.cpu_power_w)
    assert series[("capwatch_agent_published_total", ())] == 2
    assert series[("capwatch_agent_dropped_total", ())] == 3
    assert series[("capwatch_agent_spool_lost_samples_total", (("reason", "full"),))] == 2
    assert series[("capwatch_agent_spool_lost_samples_total", (("reason", "torn"),))] == 1
    assert series[("capwatch_agent_spool_lost_samples_total", (("reason", "age"),))] == 0
    assert series[("capwatch_agent_spool_bytes", ())] == 4096
    assert series[("capwatch_agent_epoch", ())] == 7
    assert series[("capwatch_agent_mqtt_connected", ())] == 1


def test_before_the_first_sample_only_the_agents_own_metrics_show() -> None:
    """No sample yet: no GPU or host series (nothing invented), the agent's counters are there."""
    expo = AgentExposition(lambda: _STATS)
    _, series = _scrape(expo)
    assert {n for n, _ in series} == {
        "capwatch_agent_samples_total",
        "capwatch_agent_published_total",
        "capwatch_agent_dropped_total",
        "capwatch_agent_spool_lost_samples_total",
        "capwatch_agent_buffered_samples",
        "capwatch_agent_unconfirmed_samples",
        "capwatch_agent_confirmed_samples_total",
        "capwatch_agent_resent_samples_total",
        "capwatch_agent_released_samples_total",
        "capwatch_agent_spool_bytes",
        "capwatch_agent_spool_write_errors_total",
        "capwatch_agent_epoch",
        "capwatch_agent_mqtt_connected",
        "capwatch_agent_last_ack_age_seconds",
    }


def test_promtool_accepts_the_agent_exposition(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """promtool parses it; its only lint remarks are the names we keep on purpose
    (dcgm-exporter's camelCase labels and its DCGM_FI_DEV_PCIE_REPLAY_COUNTER, node_exporter's
    node_memory_* names)."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    expo.update(sample)
    text, _ = _scrape(expo)
    rc, problems = promtool_check_metrics(text)
    assert rc in (0, 3), problems  # 1 would be a text promtool cannot parse
    unexpected = [
        p
        for p in problems
        if not (
            p.endswith("label names should be written in 'snake_case' not 'camelCase'")
            and (p.startswith(("DCGM_FI_", "capwatch_gpu_")))
        )
        and p != "DCGM_FI_DEV_PCIE_REPLAY_COUNTER metric name should not include type 'counter'"
        and not (
            p.startswith("node_memory_")
            and p.endswith("metric names should be written in 'snake_case' not 'camelCase'")
        )
    ]
    assert unexpected == []


# What NVIDIA's own dashboard (dcgm-exporter's grafana/dcgm-exporter-dashboard.json, Grafana
# 12239) selects, and the labels it filters and groups by: the agent must answer each.
_NVIDIA_DASHBOARD_METRICS = (
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",  # its Hostname and gpu variables come from this one
)
_NVIDIA_DASHBOARD_LABELS = ("Hostname", "gpu", "UUID")


def test_nvidias_dcgm_dashboard_finds_its_series_and_labels(
    node: tuple[NodeSampler, FakeClock, FakeNvml],
) -> None:
    """Every metric NVIDIA's dcgm-exporter dashboard queries is there for every GPU, with
    the labels its variables and legends use (its tensor-core panel needs a profiling
    counter NVML does not have, and stays empty)."""
    sampler, clock, _ = node
    inventory, sample = _two_samples(sampler, clock)
    expo = AgentExposition(lambda: _STATS)
    expo.inventory = inventory
    expo.update(sample)
    _, series = _scrape(expo)
    for name in _NVIDIA_DASHBOARD_METRICS:
        labels = _labels(series, name)
        assert sorted(d["gpu"] for d in labels) == ["0", "1", "2", "3"], name
        assert all(d[k] for d in labels for k in _NVIDIA_DASHBOARD_LABELS), name


def test_the_advertised_address_is_the_setting_else_the_listen_host_else_the_fqdn() -> None:
    """--metrics-advertise wins; a specific listen host is used as it is (IPv6 bracketed); a
    wildcard listen gives the FQDN; an FQDN no target can carry gives no address."""
    fqdn = "gpu-node-017.cluster.example"
    assert advertised_address("0.0.0.0", 9400, "gw.example:19400", fqdn=lambda: fqdn) == (
        "gw.example:19400"
    )
    assert advertised_address("10.1.2.3", 9400, None, fqdn=lambda: fqdn) == "10.1.2.3:9400"
    assert advertised_address("::1", 9400, None, fqdn=lambda: fqdn) == "[::1]:9400"
    assert advertised_address("0.0.0.0", 9401, None, fqdn=lambda: fqdn) == f"{fqdn}:9401"
    assert advertised_address("::", 9401, None, fqdn=lambda: fqdn) == f"{fqdn}:9401"
    assert advertised_address("0.0.0.0", 9400, None, fqdn=lambda: "bad host") is None
