"""``collector query --gpus`` with a node whose GPUs are in MIG mode: a sample the agent's
NVML backend took (over the fake NVML, an H100 80GB in MIG mode, NVLink traffic flowing),
stored in a real store."""

from __future__ import annotations

import json
import time

import msgspec
import pytest

from agent.fake_nvml import FakeNvml
from agent.gpu import NvmlBackend
from agent.simulate import FleetSimulator
from collector.cli import main
from collector.ingest.validate import sample_row
from collector.paths import StoreTarget
from collector.store.db import Store
from shared.clock import FakeClock
from shared.schema import Job, encode

_MIB = 2**20


_JOBS = {10_001: "4242", 10_003: "4343"}  # GPU 0's processes in GPU instances 1 and 3


@pytest.fixture
async def db(store_url: StoreTarget) -> StoreTarget:
    """One node: GPU 0 as 3g.40gb + 2 x 2g.20gb with two Slurm jobs in two of them, GPU 1
    as 7 x 1g.10gb, GPU 2 whole; the second of two samples 5 s apart."""
    clock = FakeClock()
    nvml = FakeNvml(
        3, clock=clock, load_pct=50, mig={0: ["3g.40gb", "2g.20gb", "2g.20gb"], 1: ["1g.10gb"] * 7}
    )
    backend = NvmlBackend(nvml, clock=clock, xid_wait_ms=20)
    try:
        backend.start()
        backend.sample(clock.monotonic(), slow=True)
        clock.advance(5.0)
        gpus = list(backend.sample(clock.monotonic(), slow=False))
    finally:
        backend.close()
    procs = tuple(
        msgspec.structs.replace(p, job=_JOBS.get(p.pid), step="0" if p.pid in _JOBS else None)
        for p in gpus[0].processes
    )
    gpus[0] = msgspec.structs.replace(gpus[0], processes=procs)
    sim = FleetSimulator(1, gpus_per_node=3, seed=5)
    now = time.time()
    jobs = tuple(Job(id=j, scheduler="slurm") for j in _JOBS.values())
    sample = msgspec.structs.replace(sim.sample(0, now - 1, 1), gpus=tuple(gpus), jobs=jobs)
    async with Store(store_url) as store:
        await store.write_batch([sample_row(sample, encode(sample), now)], [], sim.node_ids)
    return store_url


def test_gpus_json_lists_each_gpus_mig_devices(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """--gpus --json: a ``mig`` list per GPU (empty outside MIG mode) with ids, profile and
    memory; utilisation null as NVML gives none."""
    assert main(["query", "--db", str(db), "--json", "--gpus"]) == 0
    gpus = json.loads(capsys.readouterr().out)["gpus"]
    assert [len(g["mig"]) for g in gpus] == [3, 7, 0]
    uuid = gpus[0]["mig"][0]["uuid"]
    assert gpus[0]["mig"][0] == {
        "gi_id": 1,
        "ci_id": 0,
        "profile": "3g.40gb",
        "util_pct": None,
        "mem_used_bytes": 64 * _MIB + int(0.5 * 0.7 * 40_448 * _MIB),
        "mem_total_bytes": 40_448 * _MIB,
        "uuid": uuid,
        "processes": 1,
        "jobs": ["4242"],
    }
    assert uuid.startswith("MIG-")
    assert [(m["processes"], m["jobs"]) for m in gpus[0]["mig"][1:]] == [(1, ["4343"]), (1, [])]
    assert gpus[0]["jobs"] == ["4242", "4343"]
    assert [m["gi_id"] for m in gpus[1]["mig"]] == list(range(7, 14))
    assert len({m["uuid"] for g in gpus for m in g["mig"]}) == 10
    assert [g["util_pct"] for g in gpus] == [None, None, 50.0]


def test_gpus_json_carries_each_gpus_nvlink_traffic(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """--gpus --json: NVLink bytes/s sent and received per GPU, floats, as the agent sent."""
    assert main(["query", "--db", str(db), "--json", "--gpus"]) == 0
    gpus = json.loads(capsys.readouterr().out)["gpus"]
    tx = 0.4 * 450e9 * 0.5  # the fake's traffic at 50 % load
    for g in gpus:
        assert g["nvlink_tx_bytes_per_s"] == pytest.approx(tx, abs=500)
        assert g["nvlink_rx_bytes_per_s"] == pytest.approx(tx * 0.95, abs=500)
        assert isinstance(g["nvlink_tx_bytes_per_s"], float)


def test_gpus_table_shows_a_row_per_mig_device_under_its_gpu(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table: each GPU's row (MIG column: how many devices), then its devices' rows
    (profile and GPU instance, memory) before the next GPU."""
    assert main(["query", "--db", str(db), "--gpus"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["NODE", "GPU", "MIG"]
    assert len(lines) == 3 + 3 + 7
    assert lines[0].split()[1:4] == ["0", "3", "MIG"]
    assert [line.split()[:3] for line in lines[1:4]] == [
        ["0", "3g.40gb", "gi1"],
        ["0", "2g.20gb", "gi3"],
        ["0", "2g.20gb", "gi4"],
    ]
    assert lines[1].split()[3:6] == ["-", "13.9", "GiB"]
    assert lines[4].split()[1:4] == ["1", "7", "MIG"]
    assert [line.split()[1] for line in lines[5:12]] == ["1g.10gb"] * 7
    assert lines[12].split()[1:3] == ["2", "-"]


def test_gpus_table_shows_nvlink_and_each_mig_devices_uuid_and_jobs(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """NVLINK TX/RX per GPU (B/s in binary units); a MIG device's row ends with its jobs and
    its UUID (the MIG UUID column shows only where a GPU is in MIG mode)."""
    assert main(["query", "--db", str(db), "--json", "--gpus"]) == 0
    migs = json.loads(capsys.readouterr().out)["gpus"][0]["mig"]
    assert main(["query", "--db", str(db), "--gpus"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.index("MEM TEMP") < header.index("NVLINK TX") < header.index("NVLINK RX")
    assert header.index("NVLINK RX") < header.index("SM MHZ")
    assert header.split()[-3:] == ["JOB", "MIG", "UUID"]
    assert "83.8 GiB/s  79.6 GiB/s" in lines[0]  # 90 GB/s sent, 85.5 GB/s received
    assert [line.split()[-2:] for line in lines[1:4]] == [
        ["4242", migs[0]["uuid"]],
        ["4343", migs[1]["uuid"]],
        ["-", migs[2]["uuid"]],
    ]
    assert lines[12].split()[-1] == "-"  # a whole GPU has no MIG UUID
