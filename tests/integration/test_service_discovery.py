"""A real Prometheus finds two real agents through the collector's ``/sd`` (http_sd_configs)
and scrapes them, with the node, rack, pool and tenant labels the collector knows."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from agent.service import AgentService
from collector.governance.lease import LeaseTerms
from collector.localbroker import MosquittoBroker
from collector.store.command import Command
from tests.helpers import wait_until
from tests.integration.conftest import CollectorRunner, running_agent
from tests.integration.test_metrics_prometheus import PrometheusProcess, _until_answered

LEASED = "x1000c0s0b0n0"
SPARE = "x1001c0s0b0n0"


@asynccontextmanager
async def _agent(
    broker: MosquittoBroker, node: str, spool_dir: Path
) -> AsyncIterator[AgentService]:
    """An agent with 1 fake GPU and /metrics on a free loopback port (so it announces
    ``127.0.0.1:<port>``)."""
    async with running_agent(broker, node, spool_dir) as agent:
        yield agent


def _lease_one_node(db: Path) -> None:
    """LEASED in pool ``training``, leased to ``acme`` since yesterday (as `collector
    lease add` writes it)."""
    today = dt.datetime.now(dt.UTC).date()
    with Command(db) as tx:
        tx.pools.create("training")
        tx.pools.move([LEASED], "training", "test")
        tx.governance.ensure_tenant("acme")
        tx.governance.add_lease(
            name="acme-training",
            tenant="acme",
            pool=None,
            nodes=[LEASED],
            terms=LeaseTerms(today - dt.timedelta(days=1), 365),
        )


async def test_prometheus_discovers_and_scrapes_two_agents_through_sd(
    collector_runner: CollectorRunner, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """/sd lists both agents with their labels; Prometheus, given only the collector's /sd,
    scrapes both (up == 1) and their DCGM series carry node, rack, pool and tenant."""
    collector_runner.settings = collector_runner.settings.model_copy(
        update={"metrics_listen": "127.0.0.1:0", "sd_target_hosts": ["127.0.0.0/8"]}
    )  # the agents listen on loopback and announce 127.0.0.1: the operator allows it
    collector = await collector_runner.start()
    await wait_until(
        lambda: collector.metrics is not None and collector.metrics.port is not None, what="port"
    )
    assert collector.metrics is not None
    # In a thread: the collector's writer, on this loop, must be free to finish its batch.
    await asyncio.to_thread(_lease_one_node, collector_runner.db)
    sd_url = f"http://127.0.0.1:{collector.metrics.port}/sd"
    async with (
        _agent(mosquitto, LEASED, tmp_path / "spool-leased") as leased,
        _agent(mosquitto, SPARE, tmp_path / "spool-spare") as spare,
    ):
        want = {
            f"127.0.0.1:{leased.metrics_port}": {
                "node": LEASED,
                "rack": "x1000",
                "pool": "training",
                "tenant": "acme",
            },
            f"127.0.0.1:{spare.metrics_port}": {"node": SPARE, "rack": "x1001", "pool": "free"},
        }

        async def listed() -> dict[str, dict[str, str]]:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                r = await client.get(sd_url)
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json"
            return {g["targets"][0]: g["labels"] for g in r.json()}

        deadline = asyncio.get_running_loop().time() + 60
        while (got := await listed()) != want:
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.5)

        jobs = (
            "  - job_name: capwatch-agents\n"
            "    http_sd_configs:\n"
            f"      - url: {sd_url}\n"
            "        refresh_interval: 1s\n"
        )
        prom = PrometheusProcess(tmp_path, {}, jobs=jobs)
        try:
            up = await _until_answered(prom, 'count(up{job="capwatch-agents"} == 1) == 2')
            assert float(up[0]["value"][1]) == 2
            power = await _until_answered(prom, "count by (node) (DCGM_FI_DEV_POWER_USAGE)")
            assert {r["metric"]["node"] for r in power} == {LEASED, SPARE}
            series = await _until_answered(prom, f'DCGM_FI_DEV_POWER_USAGE{{node="{LEASED}"}}')
            labels = series[0]["metric"]
            assert (labels["rack"], labels["pool"], labels["tenant"]) == (
                "x1000",
                "training",
                "acme",
            )
            spare_up = await _until_answered(prom, f'up{{node="{SPARE}"}}')
            assert spare_up[0]["metric"]["pool"] == "free"
            assert "tenant" not in spare_up[0]["metric"]
        finally:
            prom.stop()
