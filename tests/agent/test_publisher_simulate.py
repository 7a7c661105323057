"""The fleet simulator, and the publisher against a broker that never acknowledges."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.publisher import Publisher
from agent.simulate import NODE_INDEXES, FleetSimulator, pci_bus_id, xname
from agent.spool import Spool
from shared.schema import MAX_GPUS, decode_inventory, decode_sample, encode
from shared.settings import MqttSettings
from tests.helpers import wait_until


def test_xnames_are_valid_cray_names_and_unique() -> None:
    """x<cabinet>c<chassis>s<slot>b<board>n<node>, no duplicates across 10k nodes."""
    names = [xname(i) for i in range(10_000)]
    assert names[0] == "x1000c0s0b0n0"
    assert names[1] == "x1000c0s0b0n1"
    assert names[2] == "x1000c0s0b1n0"
    assert names[256] == "x1001c0s0b0n0"
    assert len(set(names)) == 10_000


def test_simulator_is_deterministic_per_seed_and_valid() -> None:
    """Same seed, same fleet; samples pass the collector's validation; power tracks load."""
    a = FleetSimulator(4, seed=11, interval_s=5)
    b = FleetSimulator(4, seed=11, interval_s=5)
    c = FleetSimulator(4, seed=12, interval_s=5)
    ts = 1_800_000_000.0
    assert a.sample(2, ts, 0) == b.sample(2, ts, 0)
    assert a.sample(2, ts, 1) != c.sample(2, ts, 1)
    for _topic, payload in a.tick(ts):
        sample = decode_sample(payload)
        assert len(sample.gpus) == 8
        for g in sample.gpus:
            assert g.power_interval_w is not None
            assert g.util_pct is not None
            assert 70.0 <= g.power_interval_w <= 700.0
            expected = 70.0 + 630.0 * g.util_pct / 100
            assert g.power_interval_w == pytest.approx(expected)


def test_simulated_gpus_up_to_the_schema_limit_have_valid_unique_pci_ids() -> None:
    """Every count up to MAX_GPUS gives an inventory the collector accepts (no 3-digit bus)."""
    sim = FleetSimulator(1, gpus_per_node=MAX_GPUS, seed=1)
    inventory = decode_inventory(encode(sim.inventory(0, 1.8e9)))
    ids = [g.pci_bus_id for g in inventory.gpus]
    assert len(set(ids)) == MAX_GPUS
    assert ids[:2] == ["00000000:18:00.0", "00000000:28:00.0"]
    assert ids[15] == pci_bus_id(15) == "00000001:88:00.0"
    assert len(decode_sample(encode(sim.sample(0, 1.8e9, 0))).gpus) == MAX_GPUS


@pytest.mark.parametrize("gpus", [-1, MAX_GPUS + 1])
def test_simulator_refuses_more_gpus_than_the_schema_takes(gpus: int) -> None:
    """Past MAX_GPUS every simulated sample would be rejected: refused up front."""
    with pytest.raises(ValueError, match="gpus_per_node"):
        FleetSimulator(1, gpus_per_node=gpus)


def test_the_last_node_index_a_gpu_uuid_holds_gives_valid_samples() -> None:
    """The node index is the UUID's first 8 hex digits: its last value still decodes."""
    sim = FleetSimulator(2, gpus_per_node=1, first_index=NODE_INDEXES - 2)
    for i in range(2):
        decode_sample(encode(sim.sample(i, 1.8e9, 0)))
        decode_inventory(encode(sim.inventory(i, 1.8e9)))


@pytest.mark.parametrize(("first", "nodes"), [(-1, 1), (NODE_INDEXES, 1), (NODE_INDEXES - 1, 2)])
def test_simulator_refuses_node_indexes_no_gpu_uuid_holds(first: int, nodes: int) -> None:
    """`--first-index -5` (or past 16**8 nodes) made GPU UUIDs the schema refuses: every
    sample of those nodes was quarantined as invalid by the collector."""
    with pytest.raises(ValueError, match="first_index"):
        FleetSimulator(nodes, first_index=first)


def test_simulated_energy_counter_integrates_power() -> None:
    """Energy grows by power x interval between two ticks of the same GPU."""
    sim = FleetSimulator(1, seed=3, interval_s=5)
    first = sim.sample(0, 1.8e9, 0).gpus[0]
    second = sim.sample(0, 1.8e9 + 5, 1).gpus[0]
    assert first.energy_j is not None
    assert second.energy_j is not None
    assert second.power_interval_w is not None
    assert second.energy_j - first.energy_j == pytest.approx(second.power_interval_w * 5, abs=0.2)


async def test_publisher_reconnects_when_the_broker_never_acknowledges(tmp_path: Path) -> None:
    """A broker that accepts the connection but never PUBACKs makes the agent reconnect;
    it must not end the agent (and with it the offline buffer)."""
    connections = 0

    async def silent_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(4096)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK accepted, then silence
        await writer.drain()
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(silent_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mqtt = MqttSettings(host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=0.2)
    spool = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600.0)
    spool.open()
    spool.append(b"{}")
    publisher = Publisher(mqtt, "n1", spool, lambda: b"{}", time.time, publish_timeout_s=0.3)
    stop = asyncio.Event()
    async with server:
        task = asyncio.create_task(publisher.run(stop))
        await wait_until(lambda: connections >= 3, timeout_s=10, what="three connection attempts")
        assert not task.done()
        stop.set()
        async with asyncio.timeout(10):
            await task
    assert len(spool) == 1  # nothing was acknowledged, so nothing left the spool
