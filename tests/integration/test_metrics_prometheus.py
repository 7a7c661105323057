"""A real Prometheus scrapes a real collector and a real agent (fake NVML) on free loopback
ports; the collector's /readyz follows a real broker; promtool accepts its exposition."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from agent.service import AgentService
from collector.localbroker import MosquittoBroker, free_port, stop_process
from collector.service import Collector
from tests.helpers import prometheus_tool, promtool_check_metrics, wait_until
from tests.integration.conftest import CollectorRunner, running_agent
from tests.integration.secure_broker import make_pki

REPO = Path(__file__).resolve().parents[2]


async def _get(url: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(url, params=params)


@pytest.fixture
async def collector(collector_runner: CollectorRunner) -> Collector:
    """A running collector with /metrics on a free loopback port."""
    collector_runner.settings = collector_runner.settings.model_copy(
        update={"metrics_listen": "127.0.0.1:0"}
    )
    c = await collector_runner.start()
    await wait_until(lambda: c.metrics is not None and c.metrics.port is not None, what="port")
    return c


class PrometheusProcess:
    """``/usr/bin/prometheus`` with a generated config, tmp storage, on a free port."""

    def __init__(self, tmp: Path, targets: dict[str, int], *, jobs: str = "") -> None:
        """Scrape ``targets`` (job: port on 127.0.0.1) and the ``jobs`` given as YAML."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs += "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            for job, port in targets.items()
        )
        config = tmp / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}"
        )
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    prometheus_tool("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query (HTTP API); the result vector ([] before the first scrape)."""
        try:
            r = await _get(f"{self.url}/api/v1/query", query=expr)
        except httpx.TransportError:  # still starting
            return []
        if r.status_code != 200:
            return []
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=20)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[list[PrometheusProcess]]:
    """Holds the Prometheus processes a test starts; stops them after it."""
    started: list[PrometheusProcess] = []
    yield started
    for p in started:
        p.stop()


async def _until_answered(prom: PrometheusProcess, expr: str) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 60
    while not (result := await prom.query(expr)):
        if prom.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {prom.log.read_text()[-2000:]}")
        assert asyncio.get_running_loop().time() < deadline, f"no answer for {expr}"
        await asyncio.sleep(0.25)
    return result


async def test_prometheus_scrapes_collector_and_agent_and_answers_queries(
    collector: Collector,
    agent: AgentService,
    prometheus_factory: list[PrometheusProcess],
    tmp_path: Path,
) -> None:
    """Instant queries for a capwatch fleet metric (collector) and a DCGM-named metric
    (agent) answer with the values the two processes serve."""
    assert collector.metrics is not None
    targets = {"capwatch-collector": collector.metrics.port, "capwatch-agent": agent.metrics_port}
    prom = PrometheusProcess(tmp_path, {job: port or 0 for job, port in targets.items()})
    prometheus_factory.append(prom)
    await wait_until(lambda: collector.stored_total >= 2, what="samples stored")
    gpus = await _until_answered(prom, "capwatch_fleet_gpus > 0")
    assert gpus[0]["metric"]["job"] == "capwatch-collector"
    assert float(gpus[0]["value"][1]) == 2
    power = await _until_answered(prom, "DCGM_FI_DEV_POWER_USAGE")
    assert sorted(r["metric"]["gpu"] for r in power) == ["0", "1"]
    assert {r["metric"]["job"] for r in power} == {"capwatch-agent"}
    assert all(r["metric"]["UUID"].startswith("GPU-") for r in power)
    assert all(0 < float(r["value"][1]) <= 700 for r in power)
    # Both targets up at once (a single slow scrape on a busy machine may say 0 for a moment).
    await _until_answered(prom, "sum(up) == 2")
    # Every query of the Grafana dashboard is valid PromQL for this Prometheus.
    dashboard = json.loads((REPO / "deploy" / "grafana" / "capwatch.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for expr in exprs:
        concrete = expr.replace("$job", ".*").replace("$__rate_interval", "1m")
        r = await _get(f"{prom.url}/api/v1/query", query=concrete)
        assert r.status_code == 200, (expr, r.text)


async def test_collector_readyz_follows_the_broker(
    collector: Collector, mosquitto: MosquittoBroker
) -> None:
    """200 while subscribed and committing; 503 naming the broker while it is stopped; 200
    again once the collector is back on it. /healthz stays 200."""
    assert collector.metrics is not None
    base = f"http://127.0.0.1:{collector.metrics.port}"

    async def wait_for(code: int) -> str:
        deadline = asyncio.get_running_loop().time() + 30
        while (r := await _get(f"{base}/readyz")).status_code != code:
            assert asyncio.get_running_loop().time() < deadline, r.text
            await asyncio.sleep(0.1)
        return r.text

    assert (await wait_for(200)).startswith("ready")
    await asyncio.to_thread(mosquitto.stop)
    assert "broker" in await wait_for(503)
    assert (await _get(f"{base}/healthz")).status_code == 200
    await asyncio.to_thread(mosquitto.start)
    await wait_for(200)


async def test_promtool_accepts_the_running_collectors_metrics(collector: Collector) -> None:
    """The whole /metrics of a running collector (process metrics, histogram included)
    passes promtool without a single remark."""
    assert collector.metrics is not None
    body = (await _get(f"http://127.0.0.1:{collector.metrics.port}/metrics")).text
    assert "capwatch_collector_batch_commit_seconds_bucket" in body
    assert promtool_check_metrics(body) == (0, [])


async def test_prometheus_scrapes_an_agent_over_tls_with_basic_auth(
    mosquitto: MosquittoBroker, prometheus_factory: list[PrometheusProcess], tmp_path: Path
) -> None:
    """An agent with a web config (TLS, bcrypt user): Prometheus with the CA and the right
    password scrapes it (``up == 1``, its GPU series arrive); with a wrong password the
    target is down (``up == 0``, a 401)."""
    pki = make_pki(tmp_path / "pki", client_cn="prometheus")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    tls_agent = running_agent(
        mosquitto, "tls-node-1", tmp_path / "spool", gpus=2, web_config_file=web
    )
    async with tls_agent as agent:
        target = f"127.0.0.1:{agent.metrics_port}"
        jobs = "".join(
            f"  - job_name: {job}\n    scheme: https\n"
            f"    tls_config:\n      ca_file: {pki.ca_cert}\n"
            f"    basic_auth:\n      username: prometheus\n      password: {password}\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
            for job, password in (("agent-tls", "s3cret"), ("agent-wrong-password", "guess"))
        )
        prom = PrometheusProcess(tmp_path, {}, jobs=jobs)
        prometheus_factory.append(prom)
        await _until_answered(prom, 'up{job="agent-tls"} == 1')
        await _until_answered(prom, 'up{job="agent-wrong-password"} == 0')
        power = await _until_answered(prom, 'DCGM_FI_DEV_POWER_USAGE{job="agent-tls"}')
        assert sorted(r["metric"]["gpu"] for r in power) == ["0", "1"]
        assert await prom.query('DCGM_FI_DEV_POWER_USAGE{job="agent-wrong-password"}') == []
        targets = (await _get(f"{prom.url}/api/v1/targets")).json()["data"]["activeTargets"]
        wrong = next(t for t in targets if t["labels"]["job"] == "agent-wrong-password")
        assert "401" in wrong["lastError"]
