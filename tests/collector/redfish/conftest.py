"""Fixtures of the Redfish poller's tests: credentials files, a live view, a running poller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from collector.live import LiveView
from collector.redfish.credentials import load_credentials
from collector.redfish.metrics import RedfishMetrics
from collector.redfish.poller import RedfishPoller
from collector.redfish.settings import BmcSettings, RedfishSettings
from shared.clock import SystemClock
from tests.redfish import RACKMOUNT_2020, RACKMOUNT_2022, MockupBmc

USER = "capwatch"
PASSWORD = "s3cret-pw"


def write_credentials(path: Path, doc: dict[str, Any], mode: int = 0o600) -> Path:
    """A credentials file holding ``doc`` (as TOML or JSON, by ``path``'s suffix)."""
    if path.suffix == ".json":
        path.write_text(json.dumps(doc))
    else:
        import tomli_w  # noqa: PLC0415

        path.write_text(tomli_w.dumps(doc))
    path.chmod(mode)
    return path


@pytest.fixture
def creds_file(tmp_path: Path) -> Path:
    """Credentials: the mockups' user and password by default."""
    return write_credentials(
        tmp_path / "bmc-credentials.toml", {"default": {"username": USER, "password": PASSWORD}}
    )


@pytest.fixture
def bmc2022() -> Iterator[MockupBmc]:
    """A BMC serving public-rackmount1 of 2022 (EnvironmentMetrics 374 W, Power 344 W)."""
    with MockupBmc(RACKMOUNT_2022, username=USER, password=PASSWORD) as bmc:
        yield bmc


@pytest.fixture
def bmc2020() -> Iterator[MockupBmc]:
    """A BMC serving public-rackmount1 of 2020 (Power 344 W only)."""
    with MockupBmc(RACKMOUNT_2020, username=USER, password=PASSWORD) as bmc:
        yield bmc


def live_with(*nodes: str) -> LiveView:
    """A live view that knows ``nodes`` (online, no sample: no node power of their own)."""
    live = LiveView()
    for node in nodes:
        live.on_status(node, "online", time.time())
    return live


def make_poller(
    live: LiveView, creds: Path, bmcs: list[BmcSettings], **settings: Any
) -> RedfishPoller:
    """A poller over ``bmcs`` into ``live``, its metrics on a registry of its own."""
    s = RedfishSettings(
        credentials_file=creds,
        bmcs=bmcs,
        **{"interval_s": 0.1, "timeout_s": 2.0, **settings},
    )
    metrics = RedfishMetrics(CollectorRegistry())
    return RedfishPoller(s, load_credentials(creds), live.on_node_power, SystemClock(), metrics)


@contextlib.asynccontextmanager
async def running(poller: RedfishPoller) -> AsyncIterator[RedfishPoller]:
    """Run ``poller`` inside; stop it (and wait for it) after."""
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop), name="poller-under-test")
    try:
        yield poller
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


def watts(live: LiveView, node: str) -> float | None:
    """The node power the view holds for ``node`` (``None``: none)."""
    st = live.get(node)
    return None if st is None or st.node_power is None else st.node_power.watts
