"""Agent -> real Mosquitto -> collector -> `collector query`, and a broker outage mid-stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.service import AgentService, build_sampler
from agent.settings import AgentSettings
from collector.localbroker import MosquittoBroker
from shared.clock import SystemClock
from tests.helpers import collector_json, count_samples, db_rows, wait_until
from tests.integration.conftest import CollectorRunner, fast_mqtt

NODE = "itest-node-1"


class AgentRunner:
    """A real AgentService (fake GPUs: there is no NVIDIA driver here) in the test's loop."""

    def __init__(self, broker: MosquittoBroker, gpus: int, spool_dir: Path) -> None:
        self.settings = AgentSettings(
            node_id=NODE,
            interval_s=1.0,
            gpu_backend="fake",
            fake_gpus=gpus,
            mqtt=fast_mqtt(broker),
            spool_dir=spool_dir,
        )
        self.service = AgentService(self.settings, build_sampler(self.settings, SystemClock()))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.service.run(), name="agent-under-test")

    async def stop(self) -> None:
        if self._task is None:
            return
        self.service.stop()
        task, self._task = self._task, None
        async with asyncio.timeout(20):
            await task


@pytest.fixture
async def agent(mosquitto: MosquittoBroker, tmp_path: Path) -> AsyncIterator[AgentRunner]:
    runner = AgentRunner(mosquitto, gpus=2, spool_dir=tmp_path / "spool")
    yield runner
    await runner.stop()


async def _query_json(db: Path, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(
        collector_json, "query", "--db", str(db), *args
    )
    return result


async def test_agent_samples_show_in_collector_query_json(
    collector_runner: CollectorRunner, agent: AgentRunner
) -> None:
    """The node, its state and both its GPUs are visible through `collector query --json`."""
    await collector_runner.start()
    agent.start()
    db = collector_runner.db
    await wait_until(lambda: count_samples(db, NODE) >= 3, what="3 samples from the agent")
    await wait_until(
        lambda: (
            db_rows(
                db,
                "SELECT count(*) FROM nodes WHERE node = ? AND status = 'online' "
                "AND inventory IS NOT NULL",
                (NODE,),
            )
            == [(1,)]
        ),
        what="the agent's status and inventory",
    )

    summary = await _query_json(db)
    nodes = {n["node"]: n for n in summary["nodes"]}
    assert nodes[NODE]["state"] == "online"
    assert nodes[NODE]["gpus"] == 2
    assert summary["gpus_online"] == 2
    assert summary["counters"].get("rejected", 0) == 0

    fleet_gpus = (await _query_json(db, "--gpus"))["gpus"]
    assert [(g["node"], g["index"]) for g in fleet_gpus] == [(NODE, 0), (NODE, 1)]
    gpus = (await _query_json(db, "--gpus", "--node", NODE))["gpus"]
    assert [g["index"] for g in gpus] == [0, 1]
    inventory = db_rows(db, "SELECT inventory FROM nodes WHERE node = ?", (NODE,))[0][0]
    inv = json.loads(inventory)
    assert [g["uuid"] for g in gpus] == [g["uuid"] for g in inv["gpus"]]
    assert all(0 <= g["util_pct"] <= 100 for g in gpus)

    samples = (await _query_json(db, "--node", NODE, "--since", "5m"))["samples"]
    seqs = [s["seq"] for s in samples]
    assert seqs == sorted(seqs, reverse=True)
    assert len(seqs) >= 3

    await agent.stop()  # a clean stop publishes "offline" itself
    await wait_until(
        lambda: db_rows(db, "SELECT status FROM nodes WHERE node = ?", (NODE,)) == [("offline",)],
        what="offline status",
    )
    summary = await _query_json(db)
    assert {n["node"]: n["state"] for n in summary["nodes"]}[NODE] == "offline"


async def test_broker_restart_mid_stream_stores_every_sample_exactly_once(
    mosquitto: MosquittoBroker, collector_runner: CollectorRunner, agent: AgentRunner
) -> None:
    """Samples taken while the broker is down are buffered, sent later, and stored once."""
    await collector_runner.start()
    agent.start()
    db = collector_runner.db
    await wait_until(lambda: count_samples(db, NODE) >= 2, what="samples before the outage")

    await asyncio.to_thread(mosquitto.restart, 2.5)  # ~2 samples are taken while it is down
    await wait_until(lambda: agent.service.publisher.connects >= 2, what="agent reconnect")
    taken_after_outage = agent.service.samples_taken
    await wait_until(
        lambda: count_samples(db, NODE) >= taken_after_outage + 1, what="samples after the outage"
    )
    await agent.stop()

    taken = agent.service.samples_taken
    await wait_until(
        lambda: count_samples(db, NODE) == taken, timeout_s=30, what=f"all {taken} samples stored"
    )
    seqs = [
        r[0] for r in db_rows(db, "SELECT seq FROM samples WHERE node = ? ORDER BY seq", (NODE,))
    ]
    assert seqs == list(range(taken))
    assert sum(agent.service.spool.lost.values()) == 0
    assert agent.service.spool.high_water >= 2  # samples really waited out the outage
