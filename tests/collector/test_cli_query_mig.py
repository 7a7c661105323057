"""``collector query --gpus`` with a node whose GPUs are in MIG mode: a sample the agent's
NVML backend took (over the fake NVML, an H100 80GB in MIG mode), stored in a real store."""

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
from shared.schema import encode

_MIB = 2**20


@pytest.fixture
async def db(store_url: StoreTarget) -> StoreTarget:
    """One node: GPU 0 as 3g.40gb + 2 x 2g.20gb, GPU 1 as 7 x 1g.10gb, GPU 2 whole."""
    clock = FakeClock()
    nvml = FakeNvml(
        3, clock=clock, load_pct=50, mig={0: ["3g.40gb", "2g.20gb", "2g.20gb"], 1: ["1g.10gb"] * 7}
    )
    backend = NvmlBackend(nvml, clock=clock, xid_wait_ms=20)
    try:
        backend.start()
        gpus = tuple(backend.sample(clock.monotonic(), slow=True))
    finally:
        backend.close()
    sim = FleetSimulator(1, gpus_per_node=3, seed=5)
    now = time.time()
    sample = msgspec.structs.replace(sim.sample(0, now - 1, 1), gpus=gpus)
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
    assert gpus[0]["mig"][0] == {
        "gi_id": 1,
        "ci_id": 0,
        "profile": "3g.40gb",
        "util_pct": None,
        "mem_used_bytes": 64 * _MIB + int(0.5 * 0.7 * 40_448 * _MIB),
        "mem_total_bytes": 40_448 * _MIB,
    }
    assert [m["gi_id"] for m in gpus[1]["mig"]] == list(range(7, 14))
    assert [g["util_pct"] for g in gpus] == [None, None, 50.0]


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
