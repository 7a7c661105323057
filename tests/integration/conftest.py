"""Fixtures for whole-system tests: a collector running in the test's event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from agent.service import AgentService, build_sampler
from agent.settings import AgentSettings
from agent.simulate import FleetSimulator
from collector.localbroker import BrokerProcess, MosquittoBroker
from collector.service import Collector
from collector.settings import CollectorMqttSettings, CollectorSettings
from shared.clock import Clock, SystemClock
from shared.schema import encode
from shared.settings import MqttSettings
from shared.topics import sample_topic
from tests.helpers import wait_until


def fast_mqtt(broker: BrokerProcess) -> MqttSettings:
    """Broker settings with short reconnect backoff, for tests."""
    return MqttSettings(
        host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0
    )


class CollectorRunner:
    """Starts and stops real :class:`Collector` instances on one database file."""

    def __init__(self, broker: BrokerProcess, db: Path) -> None:
        self.settings = CollectorSettings(
            mqtt=CollectorMqttSettings(**dict(fast_mqtt(broker))),
            db_path=db,
            batch_max_delay_s=0.05,
        )
        self.db = db
        self.clock: Clock | None = None
        self.collector: Collector | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Collector:
        """Start a collector and wait until it is subscribed."""
        assert self._task is None, "stop the running collector first"
        self.collector = Collector(self.settings, clock=self.clock)
        self._task = asyncio.create_task(self.collector.run(), name="collector-under-test")
        async with asyncio.timeout(15):
            await self.collector.connected.wait()
        return self.collector

    async def stop(self) -> None:
        """Stop it and wait until everything it received is committed."""
        if self.collector is None or self._task is None:
            return
        self.collector.stop()
        task, self._task = self._task, None
        async with asyncio.timeout(20):
            await task


@pytest.fixture
async def collector_runner(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> AsyncIterator[CollectorRunner]:
    """A :class:`CollectorRunner` on ``tmp_path/capwatch.db``; stopped after the test."""
    runner = CollectorRunner(mosquitto, tmp_path / "capwatch.db")
    yield runner
    await runner.stop()


class HotGpuNode:
    """One simulated 8-GPU node whose GPU 3 runs at a temperature the test chooses."""

    def __init__(self, broker: MosquittoBroker, *, seed: int = 11) -> None:
        self.broker = broker
        self.sim = FleetSimulator(1, gpus_per_node=8, seed=seed, interval_s=1)
        self.node = self.sim.node_ids[0]
        self._seq = 0

    async def publish(self, temp_c: float, gpu: int = 3) -> None:
        """One sample, stamped now, with ``gpu`` at ``temp_c``."""
        sample = self.sim.sample(0, time.time(), self._seq)
        self._seq += 1
        gpus = [
            msgspec.structs.replace(g, temp_c=temp_c) if g.index == gpu else g for g in sample.gpus
        ]
        payload = encode(msgspec.structs.replace(sample, gpus=gpus))
        async with aiomqtt.Client(self.broker.host, self.broker.port, identifier="hot") as client:
            await client.publish(sample_topic(self.node), payload, qos=1)


@pytest.fixture
async def agent(mosquitto: MosquittoBroker, tmp_path: Path) -> AsyncIterator[AgentService]:
    """A running agent with 2 fake GPUs and /metrics on a free loopback port."""
    settings = AgentSettings(
        node_id="metrics-node-1",
        interval_s=1.0,
        gpu_backend="fake",
        fake_gpus=2,
        mqtt=fast_mqtt(mosquitto),
        metrics_listen="127.0.0.1:0",
        spool_dir=tmp_path / "agent-spool",
    )
    service = AgentService(settings, build_sampler(settings, SystemClock()))
    task = asyncio.create_task(service.run(), name="agent-under-test")
    await wait_until(lambda: service.metrics_port is not None, what="agent metrics port")
    yield service
    service.stop()
    async with asyncio.timeout(20):
        await task
