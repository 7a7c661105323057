"""Both daemons tell a (stand-in) systemd READY=1 and keep its watchdog fed while healthy."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.service import AgentService, build_sampler
from agent.settings import AgentSettings
from collector.localbroker import MosquittoBroker
from collector.service import Collector
from collector.settings import CollectorMqttSettings, CollectorSettings
from shared.clock import SystemClock
from shared.sdnotify import SdNotifier
from tests.helpers import wait_until
from tests.integration.conftest import fast_mqtt
from tests.shared.test_sdnotify import FakeSystemd


async def test_collector_and_agent_notify_ready_and_ping_the_watchdog(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """READY=1, then WATCHDOG=1 from each daemon's loop (writer committing, sampler
    sampling), and STOPPING=1 on a clean stop."""
    c_sd, a_sd = FakeSystemd(tmp_path / "c.sock"), FakeSystemd(tmp_path / "a.sock")
    collector = Collector(
        CollectorSettings(
            mqtt=CollectorMqttSettings(**dict(fast_mqtt(mosquitto))), db_path=tmp_path / "c.db"
        ),
        notifier=SdNotifier(str(c_sd.path), watchdog_s=0.6),
    )
    settings = AgentSettings(
        node_id="sd-node",
        interval_s=1.0,
        gpu_backend="none",
        mqtt=fast_mqtt(mosquitto),
        spool_dir=tmp_path / "spool",
    )
    agent = AgentService(
        settings,
        build_sampler(settings, SystemClock()),
        notifier=SdNotifier(str(a_sd.path), watchdog_s=0.6),
    )
    tasks = [asyncio.create_task(collector.run()), asyncio.create_task(agent.run())]
    try:
        for sd in (c_sd, a_sd):
            await wait_until(lambda sd=sd: sd.drain().count("WATCHDOG=1") >= 3, what="pings")  # type: ignore[misc]
            assert sd.got[0] == "READY=1"
    finally:
        collector.stop()
        agent.stop()
        async with asyncio.timeout(20):
            await asyncio.gather(*tasks)
        for sd in (c_sd, a_sd):
            assert sd.drain()[-1] == "STOPPING=1"
            sd.sock.close()
