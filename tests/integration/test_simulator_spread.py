"""The fleet simulator's ``spread`` mode against a real broker: each node publishes at its own
phase of the interval (as a real fleet's agents do), not all at once at each tick."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.localbroker import MosquittoBroker
from shared.schema import decode_sample
from shared.settings import MqttSettings
from shared.topics import LIVE_SUBSCRIPTION

NODES = 48
INTERVAL_S = 1.0


async def _received(broker: MosquittoBroker, *, spread: bool) -> list[tuple[float, float, int]]:
    """(time received, the sample's ts, its seq) of every sample of 2 ticks."""
    sim = FleetSimulator(NODES, gpus_per_node=1, seed=5, interval_s=INTERVAL_S)
    mqtt = MqttSettings(host=broker.host, port=broker.port)
    got: list[tuple[float, float, int]] = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(LIVE_SUBSCRIPTION, qos=1)

        async def listen() -> None:
            async for message in client.messages:
                sample = decode_sample(bytes(message.payload))
                got.append((time.time(), sample.ts, sample.seq))
                if len(got) == 2 * NODES:
                    return

        listener = asyncio.create_task(listen())
        stats = await publish_fleet(mqtt, sim, ticks=2, spread=spread)
        await asyncio.wait_for(listener, 10)
    assert stats.published == 2 * NODES
    return got


def _span(got: list[tuple[float, float, int]], seq: int, field: int) -> float:
    values = [g[field] for g in got if g[2] == seq]
    assert len(values) == NODES
    return max(values) - min(values)


async def test_spread_publishes_each_node_at_its_own_phase(mosquitto: MosquittoBroker) -> None:
    """Spread: a tick's samples are taken, and arrive, across most of the interval (node i
    at i / nodes of it); the default sends a tick's samples together, all with one ts."""
    spread = await _received(mosquitto, spread=True)
    for seq in (0, 1):
        assert _span(spread, seq, 1) >= 0.7 * INTERVAL_S  # taken across the interval
        assert _span(spread, seq, 0) >= 0.5 * INTERVAL_S  # and arriving so (a loaded machine)
    for received, ts, _ in spread:
        assert received >= ts  # published when taken, not ahead of its time
    together = await _received(mosquitto, spread=False)
    for seq in (0, 1):
        assert _span(together, seq, 1) == pytest.approx(0.0)
        assert _span(together, seq, 0) < 0.5 * INTERVAL_S
