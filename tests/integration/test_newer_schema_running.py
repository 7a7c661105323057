"""A newer capwatch migrates the store while this collector runs (an upgrade started beside
it, a failover to a primary the new version migrated): the collector stops with the line its
start gives for such a store (exit 2) instead of writing on by the older schema's rules.
Checked every ``SCHEMA_CHECK_S`` on both backends, and at each reconnect to PostgreSQL. Both
were silent: only the start asked."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.localbroker import MosquittoBroker
from collector.localpg import LocalPostgres
from collector.paths import PgTarget, StoreTarget, parse_target
from collector.store.db import Store
from collector.store.migrations import SCHEMA_CHECK_S
from shared.cli import first_error
from shared.errors import StoreError
from tests.helpers import count_samples, db_execute, wait_until
from tests.integration.conftest import CollectorRunner, fast_mqtt

pytestmark = pytest.mark.integration

_FUTURE = "INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_future', 2)"


async def test_a_running_collector_stops_when_a_newer_capwatch_migrates_its_store(
    mosquitto: MosquittoBroker, store_url: StoreTarget
) -> None:
    runner = CollectorRunner(mosquitto, store_url)
    collector = await runner.start()
    task = runner._task
    assert task is not None
    sim = FleetSimulator(3, gpus_per_node=8, seed=5, interval_s=1)
    sent = await publish_fleet(fast_mqtt(mosquitto), sim, ticks=2, burst=True)
    await wait_until(lambda: count_samples(store_url) == sent.published, what="the samples")
    db_execute(store_url, _FUTURE)
    done, _ = await asyncio.wait([task], timeout=3 * SCHEMA_CHECK_S + 10)
    runner._task = None
    if not done:
        collector.stop()
        await task
        pytest.fail("the collector ran on, writing the store by the older schema's rules")
    exc = task.exception()
    assert exc is not None
    err = first_error(exc, StoreError)
    assert err is not None, exc
    assert err.exit_code == 2
    assert f"{str(store_url)!r} was migrated by a newer capwatch (9999_future," in str(err)


async def test_a_reconnect_to_postgresql_refuses_a_store_a_newer_capwatch_migrated(
    postgres_server: LocalPostgres, postgres_url: str
) -> None:
    """The server restarts (or fails over) and comes back with the store migrated further:
    the writer's reconnect says so (exit 2, not 'unavailable': the writer would wait on)."""
    target = parse_target(postgres_url)
    assert isinstance(target, PgTarget)
    async with Store(target) as store:
        db_execute(target, _FUTURE)
        postgres_server.stop()
        postgres_server.start()
        t0 = time.monotonic()
        with pytest.raises(StoreError) as refused:
            await store.reconnect()
        assert time.monotonic() - t0 < 30
    assert refused.value.exit_code == 2
    assert not refused.value.unavailable
    assert "was migrated by a newer capwatch (9999_future," in str(refused.value)
