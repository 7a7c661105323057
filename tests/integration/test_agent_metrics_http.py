"""A real agent (fake NVML) serving /metrics, /healthz and /readyz over loopback HTTP, with a
real broker that goes away and comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from agent.service import AgentService, build_sampler
from agent.settings import AgentSettings
from collector.localbroker import MosquittoBroker
from shared.clock import SystemClock
from shared.errors import ConfigError
from tests.helpers import wait_until
from tests.integration.conftest import fast_mqtt, running_agent


async def _get(port: int | None, path: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def _status(agent: AgentService, path: str) -> int:
    return (await _get(agent.metrics_port, path)).status_code


async def _wait_status(agent: AgentService, path: str, code: int) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while (got := await _status(agent, path)) != code:
        assert asyncio.get_running_loop().time() < deadline, f"{path}: {got}, want {code}"
        await asyncio.sleep(0.1)


async def test_readyz_follows_the_broker_and_healthz_stays_up(
    agent: AgentService, mosquitto: MosquittoBroker
) -> None:
    """Ready once a sample is acknowledged; 503 naming the broker while it is stopped; ready
    again after it returns. /healthz answers 200 throughout."""
    await _wait_status(agent, "/readyz", 200)
    assert (await _get(agent.metrics_port, "/readyz")).text.startswith("ready")
    await asyncio.to_thread(mosquitto.stop)
    await _wait_status(agent, "/readyz", 503)
    assert "broker" in (await _get(agent.metrics_port, "/readyz")).text
    assert await _status(agent, "/healthz") == 200
    await asyncio.to_thread(mosquitto.start)
    await _wait_status(agent, "/readyz", 200)


async def test_metrics_show_the_sample_just_published(agent: AgentService) -> None:
    """/metrics carries the GPU series of the latest sample and the publish counter."""
    await wait_until(lambda: agent.publisher.published >= 2, what="two samples published")
    body = (await _get(agent.metrics_port, "/metrics")).text
    assert body.count("DCGM_FI_DEV_POWER_USAGE{") == 2
    assert "capwatch_agent_published_total" in body
    assert (await _get(agent.metrics_port, "/nope")).status_code == 404


async def test_a_port_in_use_is_one_config_error_naming_the_setting(
    agent: AgentService, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """A second agent on the same metrics port fails before sampling, naming metrics_listen."""
    settings = AgentSettings(
        node_id="metrics-node-2",
        gpu_backend="none",
        mqtt=fast_mqtt(mosquitto),
        metrics_listen=f"127.0.0.1:{agent.metrics_port}",
        spool_dir=tmp_path / "spool-2",
    )
    other = AgentService(settings, build_sampler(settings, SystemClock()))
    with pytest.raises(ConfigError, match="metrics_listen") as info:
        await other.run()
    assert info.value.field == "metrics_listen"


async def test_the_hostname_label_setting_reaches_the_served_series(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """``dcgm_hostname_label = "hostname"``: the served DCGM series say ``hostname=``."""
    labelled = running_agent(
        mosquitto, "metrics-node-3", tmp_path / "spool", dcgm_hostname_label="hostname"
    )
    async with labelled as agent:
        await wait_until(lambda: agent.samples_taken >= 1, what="a sample")
        body = (await _get(agent.metrics_port, "/metrics")).text
        power = [line for line in body.splitlines() if line.startswith("DCGM_FI_DEV_POWER_USAGE{")]
        assert len(power) == 1
        assert ',hostname="' in power[0]
        assert "Hostname=" not in body
