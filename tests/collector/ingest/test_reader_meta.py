"""The broker session's facts reach the store once per subscription (both backends).

A scripted subscriber stands in for the MQTT connection (the broker is the boundary); the
store is real, and a trigger on its ``meta`` table counts every write of the filters fact.
"""

from __future__ import annotations

import asyncio

import pytest

from collector.ingest.reader import FILTERS_META_KEY, FilterState
from collector.paths import PgTarget, StoreTarget
from collector.service import Collector
from collector.settings import CollectorSettings
from collector.store.db import Store
from shared.clock import FakeClock
from shared.topics import LEGACY_SUBSCRIPTIONS, SUBSCRIPTIONS
from tests.collector.ingest.scripted import ScriptedBroker
from tests.helpers import db_execute, db_rows, wait_until

T0 = 1_800_000_000.0


def _count_filter_writes(db: StoreTarget) -> None:
    """A table ``filter_writes`` gets a row at each insert or update of a filters fact."""
    db_execute(db, "CREATE TABLE filter_writes (value TEXT NOT NULL)")
    like = f"NEW.key LIKE '{FILTERS_META_KEY} %'"
    if isinstance(db, PgTarget):
        db_execute(
            db,
            "CREATE FUNCTION count_filter_writes() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF {like} THEN INSERT INTO filter_writes VALUES (NEW.value); END IF; "
            "RETURN NEW; END $$",
        )
        db_execute(
            db,
            "CREATE TRIGGER count_filter_writes AFTER INSERT OR UPDATE ON meta "
            "FOR EACH ROW EXECUTE FUNCTION count_filter_writes()",
        )
        return
    for event in ("INSERT", "UPDATE"):
        db_execute(
            db,
            f"CREATE TRIGGER count_filter_{event.lower()} AFTER {event} ON meta WHEN {like} "
            "BEGIN INSERT INTO filter_writes VALUES (NEW.value); END",
        )


@pytest.mark.parametrize("session_present", [False, True], ids=["new", "resumed"])
async def test_a_subscription_writes_the_filters_fact_once(
    store_url: StoreTarget, session_present: bool
) -> None:
    """A new session (subscribed) and a resumed one this store never saw (the filter
    added) each write the filters they hold once, not once for the subscription and again
    with the session's first fact."""
    async with Store(store_url):  # the schema, so the trigger has its table
        pass
    _count_filter_writes(store_url)
    target: dict[str, object] = (
        {"store": {"url": store_url.url}}
        if isinstance(store_url, PgTarget)
        else {"db_path": store_url}
    )
    settings = CollectorSettings.model_validate(target)
    broker = ScriptedBroker(session_present=session_present)
    collector = Collector(settings, clock=FakeClock(start_wall=T0), connect=broker.connect)
    task = asyncio.create_task(collector.run(), name="collector-under-test")
    await wait_until(
        lambda: bool(db_rows(store_url, "SELECT value FROM meta WHERE key LIKE 'mqtt_session %'")),
        timeout_s=10,
        what="session remembered",
    )
    collector.stop()
    async with asyncio.timeout(20):
        await task
    held = (*LEGACY_SUBSCRIPTIONS, *SUBSCRIPTIONS) if session_present else SUBSCRIPTIONS
    writes = db_rows(store_url, "SELECT value FROM filter_writes")
    assert [FilterState.from_json(v) for (v,) in writes] == [FilterState(held, T0)]
