"""What a node's inventory claims is held only as far as its samples bear it out: a node
announcing 64 GPUs of 5 kW each while its samples list 8 counts 8 GPUs and their limits,
in the collector's governance (live view), from the store (lease admission, the ledger,
``collector usage``) and through the one rule, :func:`collector.nodefacts.hardware`."""

from __future__ import annotations

import time

import msgspec

from agent.simulate import FleetSimulator
from collector.governance.usage import node_facts
from collector.live import LiveView
from collector.nodefacts import Hardware, Staleness, hardware
from collector.paths import StoreTarget
from collector.store.db import NodeUpdate, SampleRow, Store
from collector.store.queries import latest_sample
from collector.store.reader import StoreReader
from collector.store.usage import node_hardware
from collector.store.watermarks import WatermarkRow
from shared.schema import MAX_GPU_POWER_W, MAX_GPUS, Inventory, encode
from tests.collector.governance.hw_fleet import Spec
from tests.collector.governance.hw_fleet import inventory as spec_inventory

T0 = float(int(time.time()))
SIM = FleetSimulator(2, seed=3, interval_s=5)


def _claiming(i: int, gpus: int, limit_w: float) -> Inventory:
    """Node ``i``'s inventory, claiming ``gpus`` GPUs of ``limit_w`` each."""
    inv = SIM.inventory(i, T0)
    g = inv.gpus[0]
    claimed = [
        msgspec.structs.replace(
            g, index=k, uuid=f"GPU-{i:08x}-0000-4000-8000-{k:012x}", power_limit_w=limit_w
        )
        for k in range(gpus)
    ]
    return msgspec.structs.replace(inv, gpus=claimed)


def test_the_count_is_what_the_samples_show_and_the_schema_allows() -> None:
    """64 claimed, 8 shown: 8 GPUs and the 8 lowest limits; no sample: the claim, at most
    MAX_GPUS GPUs of at most MAX_GPU_POWER_W each; 0 shown: none."""
    inv = _claiming(0, 64, MAX_GPU_POWER_W)
    assert hardware(inv, 8) == Hardware(8, 8 * MAX_GPU_POWER_W)
    assert hardware(inv) == Hardware(64, 64 * MAX_GPU_POWER_W)
    assert hardware(inv, 0) == Hardware(0, 0.0)
    mixed = msgspec.structs.replace(
        inv,
        gpus=[msgspec.structs.replace(g, power_limit_w=100.0 * (g.index + 1)) for g in inv.gpus],
    )
    assert hardware(mixed, 2) == Hardware(2, 100.0 + 200.0)
    built = _claiming(0, 2 * MAX_GPUS, 100.0)  # built by hand, past the schema
    assert hardware(built) == Hardware(MAX_GPUS, MAX_GPUS * 100.0)
    forged = msgspec.structs.replace(
        inv, gpus=[msgspec.structs.replace(inv.gpus[0], power_limit_w=1e9)]
    )
    assert hardware(forged) == Hardware(1, MAX_GPU_POWER_W)


def test_governance_holds_what_the_live_samples_show() -> None:
    """In the live view: the node claiming 64 GPUs of 5 kW whose sample lists 8 holds 8 and
    their limits; once its sample lists 4 (4 GPUs gone), 4."""
    view = LiveView()
    sample = SIM.sample(0, T0 - 1, 1)
    assert len(sample.gpus) == 8
    view.on_inventory(_claiming(0, 64, MAX_GPU_POWER_W), T0 - 10)
    view.on_status(sample.node, "online", T0 - 10)
    view.on_sample(sample, T0 - 1)
    staleness = Staleness(intervals=3, expected_interval_s=5)
    held, _ = node_facts(view.nodes(), T0, staleness=staleness, busy_util_pct=10.0)
    assert held == {sample.node: Hardware(8, 8 * MAX_GPU_POWER_W)}
    fewer = msgspec.structs.replace(sample, ts=T0, seq=2, gpus=sample.gpus[:4])
    view.on_sample(fewer, T0)
    held, _ = node_facts(view.nodes(), T0, staleness=staleness, busy_util_pct=10.0)
    assert held == {sample.node: Hardware(4, 4 * MAX_GPU_POWER_W)}


async def test_the_store_holds_what_the_newest_stored_sample_shows(store_url: StoreTarget) -> None:
    """From the store: the claiming node counts its newest sample's 8 GPUs (an older
    sample listed 64); an honest one its 4; one never sampled its inventory's 4."""
    specs = {"claims": 4, "honest": 4, "quiet": 4}
    updates = [
        NodeUpdate(n, "online", T0, encode(spec_inventory(Spec(n, gpus=g), T0)), T0)
        for n, g in specs.items()
    ]
    updates[0] = NodeUpdate(
        "claims", "online", T0, encode(spec_inventory(Spec("claims", gpus=64), T0)), T0
    )

    def row(node: str, ts: float, gpus: int) -> SampleRow:
        ms = int(ts * 1000)
        return SampleRow(node, ms, 1, ms, 5.0, 10.0, 1, 2, gpus, 50.0, None, 300.0, 200.0, b"{}")

    rows = [row("claims", T0 - 10, 64), row("claims", T0 - 5, 8), row("honest", T0 - 5, 4)]
    async with Store(store_url, compress=False) as store:
        await store.write_batch(rows, updates, new_nodes=list(specs))
    with StoreReader(store_url) as reader:
        got = reader.run(node_hardware(reader.dialect))
    assert {n: hw.gpus for n, hw in got.items()} == {"claims": 8, "honest": 4, "quiet": 4}


async def test_the_store_counts_the_newest_sample_by_epoch_and_seq(store_url: StoreTarget) -> None:
    """A node whose clock stepped back (NTP) after a sample listing 8 GPUs: its next sample,
    stamped 2 minutes earlier but later by ``seq``, lists 4 (4 GPUs gone). The store counts
    the 4, as ``collector query`` and the live view name that sample
    (:func:`collector.store.queries.latest_sample`), not the 8 of the sample newest by time."""
    inv = encode(spec_inventory(Spec("stepped", gpus=8), T0))

    def row(ts: float, seq: int, gpus: int) -> SampleRow:
        ms = int(ts * 1000)
        return SampleRow(
            "stepped", ms, seq, ms, 5.0, 10.0, 1, 2, gpus, 50.0, None, 300.0, 200.0, b"{}", 7
        )

    before, after = row(T0 - 5, 1, 8), row(T0 - 125, 2, 4)
    mark = WatermarkRow("stepped", 7, 2, 2, before.ts_ms, after.ts_ms, before.ts_ms)
    async with Store(store_url, compress=False) as store:
        await store.write_batch(
            [before, after],
            [NodeUpdate("stepped", "online", T0, inv, T0)],
            new_nodes=["stepped"],
            marks=[mark],
        )
    with StoreReader(store_url) as reader:
        got = reader.run(node_hardware(reader.dialect))
        newest = reader.fetchall(
            f"SELECT s.seq, s.gpu_count FROM nodes n {latest_sample(reader.dialect)}"
        )
    assert [tuple(r) for r in newest] == [(2, 4)]
    assert {n: hw.gpus for n, hw in got.items()} == {"stepped": 4}
