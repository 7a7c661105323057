"""Fixtures for whole-system tests: a collector running in the test's event loop, and real
agent processes publishing through their spools (crash tests kill and restart them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import msgspec
import pytest
import structlog

from agent.service import AgentService, build_sampler
from agent.settings import AgentSettings
from agent.simulate import FleetSimulator, publish_fleet
from collector.alerts.settings import AlertSettings
from collector.localbroker import BrokerProcess, MosquittoBroker, free_port
from collector.paths import StoreTarget
from collector.service import Collector
from collector.settings import CollectorMqttSettings, CollectorSettings, StoreSettings
from shared.clock import Clock, SystemClock
from shared.schema import encode
from shared.settings import MqttSettings
from shared.topics import sample_topic
from tests.helpers import collector_cli, db_rows, promtool_check_metrics, wait_until


def fast_mqtt(broker: BrokerProcess) -> MqttSettings:
    """Broker settings with short reconnect backoff, for tests."""
    return MqttSettings(
        host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0
    )


class CollectorRunner:
    """Starts and stops real :class:`Collector` instances on one store (a SQLite file or a
    PostgreSQL database)."""

    def __init__(self, broker: BrokerProcess, db: StoreTarget) -> None:
        where: dict[str, Any] = (
            {"db_path": db} if isinstance(db, Path) else {"store": StoreSettings(url=db.url)}
        )
        self.settings = CollectorSettings(
            mqtt=CollectorMqttSettings(**dict(fast_mqtt(broker))), batch_max_delay_s=0.05, **where
        )
        self.target = db
        self.clock: Clock | None = None
        self.collector: Collector | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def db(self) -> Path:
        """The SQLite file (the runners of most tests)."""
        assert isinstance(self.target, Path), "a PostgreSQL runner: use .target"
        return self.target

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


@pytest.fixture(autouse=True)
def _logs_to_the_tests_stderr() -> Iterator[None]:
    """The daemons these tests run in this process (collector, agent) log to the test's
    stderr as it is now, not to whatever ``sys.stdout`` is when they log: a command run
    beside them here redirects ``sys.stdout`` for the whole process while it runs
    (``contextlib.redirect_stdout``), and structlog's unconfigured default prints to it, so
    a daemon's line landed in the command's ``--json`` output now and then."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    try:
        yield
    finally:
        structlog.configure(**saved)


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

    @staticmethod
    def prompt(alerts: AlertSettings) -> AlertSettings:
        """``alerts`` evaluated every 0.5 s, GpuTemperature firing and resolving on the
        first sample that crosses: what the hot GPU's tests wait on."""
        return alerts.model_copy(
            update={
                "eval_interval_s": 0.5,
                "gpu_temp_for_s": 0.0,
                "gpu_temp_keep_firing_for_s": 0.0,
            }
        )

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


@contextlib.asynccontextmanager
async def running_agent(
    broker: BrokerProcess, node: str, spool_dir: Path, *, gpus: int = 1, **settings: Any
) -> AsyncIterator[AgentService]:
    """An agent in this event loop: ``gpus`` fake GPUs, a sample a second, /metrics on a free
    loopback port (its ``metrics_port`` known when the block starts), ``settings`` on top;
    stopped and awaited (20 s at most) when the block ends."""
    config = AgentSettings(
        node_id=node,
        interval_s=1.0,
        gpu_backend="fake",
        fake_gpus=gpus,
        mqtt=fast_mqtt(broker),
        metrics_listen="127.0.0.1:0",
        spool_dir=spool_dir,
        **settings,
    )
    service = AgentService(config, build_sampler(config, SystemClock()))
    task = asyncio.create_task(service.run(), name=f"agent-{node}")
    try:
        await wait_until(lambda: service.metrics_port is not None, what="agent metrics port")
        yield service
    finally:
        service.stop()
        async with asyncio.timeout(20):
            await task


@pytest.fixture
async def agent(mosquitto: MosquittoBroker, tmp_path: Path) -> AsyncIterator[AgentService]:
    """A running agent with 2 fake GPUs and /metrics on a free loopback port."""
    async with running_agent(mosquitto, "metrics-node-1", tmp_path / "agent-spool", gpus=2) as a:
        yield a


SPOOL_NODE = "spool-node-1"
"""The node id of an :class:`AgentProcess` unless given."""


class AgentProcess:
    """``agent run`` as a real process (no GPUs), its /metrics on a loopback port."""

    def __init__(
        self,
        broker: MosquittoBroker,
        spool_dir: Path,
        log: Path,
        node: str = SPOOL_NODE,
        env: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.node = node
        self.log = log
        env = {**os.environ, "CAPWATCH_MQTT__RECONNECT_MAX_S": "1", **(env or {})}
        argv = [sys.executable, "-m", "agent", "run", "--node-id", node, "--interval", "1"]
        argv += ["--gpu-backend", "none", "--host", broker.host, "--port", str(broker.port)]
        argv += ["--spool-dir", str(spool_dir)]
        argv += ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def metric(self, name: str) -> float | None:
        """One unlabelled series of its /metrics, or None while it does not answer."""
        try:
            body = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agent processes a test starts (appends); SIGKILLed after it if still running."""
    started: list[AgentProcess] = []
    yield started
    for a in started:
        if a.proc.poll() is None:
            a.kill()


def stored_seqs(db: Path, node: str = SPOOL_NODE) -> list[tuple[int, int]]:
    """(epoch, seq) of the node's stored samples, in the order they arrived."""
    rows = db_rows(db, "SELECT epoch, seq FROM samples WHERE node = ? ORDER BY rowid", (node,))
    return [(int(e), int(s)) for e, s in rows]


def samples_taken(agent: AgentProcess) -> int:
    """Samples the stopped agent took (its ``agent_stopped`` log line)."""
    for line in reversed(agent.log.read_text().splitlines()):
        if '"agent_stopped"' in line:
            event = json.loads(line)
            if event.get("node", agent.node) == agent.node:
                return int(event["samples"])
    raise AssertionError(f"no agent_stopped line in {agent.log}")


def watermark_seq(agent: AgentProcess) -> float:
    """The last store watermark the agent heard (-1 before any)."""
    return agent.metric("capwatch_agent_watermark_seq") or -1.0


async def wait_watermarks(fleet: list[AgentProcess], seq: int) -> None:
    """Until every agent heard a watermark at ``seq`` or past it."""
    for a in fleet:

        def reached(a: AgentProcess = a) -> bool:
            return watermark_seq(a) >= seq

        await wait_until(reached, timeout_s=30, what=f"{a.node}: watermark {seq}")


async def wait_acknowledged(fleet: list[AgentProcess], more: int) -> None:
    """Until the broker acknowledged ``more`` samples of every agent from now on."""
    acked = {a.node: a.metric("capwatch_agent_published_total") or 0 for a in fleet}
    for a in fleet:

        def grown(a: AgentProcess = a) -> bool:
            return (a.metric("capwatch_agent_published_total") or 0) >= acked[a.node] + more

        await wait_until(grown, timeout_s=30, what=f"{a.node}: {more} samples acknowledged")


def start_agents(
    broker: MosquittoBroker, tmp_path: Path, agents: list[AgentProcess], n: int
) -> list[AgentProcess]:
    """``n`` agent processes, nodes ``wm-node-<i>``, each with its spool and log in tmp."""
    started = []
    for i in range(n):
        node = f"wm-node-{i}"
        a = AgentProcess(broker, tmp_path / f"spool-{i}", tmp_path / f"{node}.log", node=node)
        agents.append(a)
        started.append(a)
    return started


async def stop_and_count(db: Path, agents: list[AgentProcess]) -> dict[str, tuple[int, int, int]]:
    """Stop the agents; once every sample each took is stored, per node: (taken, stored
    rows, distinct seqs)."""
    for a in agents:
        await asyncio.to_thread(a.stop)
    taken = {a.node: samples_taken(a) for a in agents}
    for a in agents:

        def all_stored(a: AgentProcess = a) -> bool:
            return len({s for _, s in stored_seqs(db, a.node)}) >= taken[a.node]

        await wait_until(
            all_stored, timeout_s=30, what=f"{a.node}: all {taken[a.node]} samples stored"
        )
    out = {}
    for a in agents:
        seqs = [s for _, s in stored_seqs(db, a.node)]
        out[a.node] = (taken[a.node], len(seqs), len(set(seqs)))
    return out


def capacity_json(*argv: str) -> tuple[int, dict[str, Any]]:
    """``collector capacity ARGV --json`` in this process: its exit status and document."""
    code, out, _ = collector_cli("capacity", *argv, "--json")
    return code, json.loads(out)


def capacity_ok(*argv: str) -> dict[str, Any]:
    """As :func:`capacity_json`, for a command that must succeed."""
    code, doc = capacity_json(*argv)
    assert code == 0
    return doc


def latest_capacity(db: StoreTarget) -> dict[str, Any]:
    """The newest capacity snapshot's detail (what ``collector capacity --json`` shows under
    ``capacity``); ``{}`` before the first."""
    rows = db_rows(db, "SELECT detail FROM capacity_snapshots ORDER BY at DESC LIMIT 1")
    detail: dict[str, Any] = json.loads(rows[0][0]) if rows else {}
    return detail


@contextlib.asynccontextmanager
async def publishing(
    broker: BrokerProcess, sim: FleetSimulator, workers: int
) -> AsyncIterator[None]:
    """``sim``'s fleet published in the background (paced, as agents would) until the block
    ends; the publisher is then stopped and awaited, so its errors surface."""
    stop = asyncio.Event()
    publisher = asyncio.create_task(
        publish_fleet(fast_mqtt(broker), sim, stop=stop, workers=workers), name="fleet"
    )
    try:
        yield
    finally:
        stop.set()
        await publisher


async def scrape_clean(collector: Collector) -> str:
    """A running collector's /metrics, asserted clean by ``promtool check metrics``."""
    assert collector.metrics is not None
    url = f"http://127.0.0.1:{collector.metrics.port}/metrics"
    text = await asyncio.to_thread(lambda: httpx.get(url, timeout=10).text)
    assert promtool_check_metrics(text) == (0, [])
    return text


def series_values(text: str, prefix: str) -> dict[str, float]:
    """``name{labels}`` -> value of each series in the exposition ``text`` whose name starts
    with ``prefix``."""
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out
