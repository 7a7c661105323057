"""Two collectors in a share group, elected through a real PostgreSQL: one leads.

Each collector here keeps its own SQLite store (the PostgreSQL store is another part of
the work): what is tested is the role machinery. The election runs on a real PostgreSQL
(``election.url``), the ingest on a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.counters import value
from collector.localbroker import MosquittoBroker
from collector.service import Collector
from collector.settings import CollectorMqttSettings, CollectorSettings, ElectionSettings
from collector.store.command import Command
from shared.settings import MqttSettings
from tests.helpers import wait_until
from tests.integration.conftest import fast_mqtt

pytestmark = pytest.mark.integration

_LEASE_S = 2.0


class _Member:
    """One collector of the group, running in this event loop."""

    def __init__(self, name: str, mqtt: MqttSettings, url: str, db: Path) -> None:
        self.collector = Collector(
            CollectorSettings(
                mqtt=CollectorMqttSettings(**{**dict(mqtt), "share_group": "site"}),
                client_id=f"collector-{name}",
                db_path=db,
                election=ElectionSettings(url=url, lease_s=_LEASE_S, poll_s=0.1),  # type: ignore[arg-type]
            )
        )
        self.task = asyncio.create_task(self.collector.run(), name=f"collector-{name}")

    @property
    def leading(self) -> bool:
        role = self.collector.role
        return role is not None and role.leading

    @property
    def evaluations(self) -> int:
        return value(self.collector.alert_metrics.evaluations)

    async def stop(self) -> None:
        if not self.task.done():
            self.collector.stop()
            async with asyncio.timeout(20):
                await self.task

    async def crash(self) -> None:
        """End it without a clean stop: no lease release (as a SIGKILL would)."""
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def members(
    mosquitto: MosquittoBroker, postgres_url: str, tmp_path: Path
) -> AsyncIterator[list[_Member]]:
    mqtt = fast_mqtt(mosquitto)
    both = [_Member(n, mqtt, postgres_url, tmp_path / f"{n}.db") for n in ("a", "b")]
    for m in both:
        async with asyncio.timeout(15):
            await m.collector.connected.wait()
    yield both
    for m in both:
        await m.stop()


def _leaders(members: list[_Member]) -> list[_Member]:
    return [m for m in members if m.leading]


async def test_exactly_one_collector_evaluates_and_shows_it_on_metrics(
    members: list[_Member],
) -> None:
    """One leader runs the alert evaluations; the standby ingests and evaluates nothing;
    capwatch_collector_leader says which, with the term's token."""
    await wait_until(lambda: len(_leaders(members)) == 1, what="one leader")
    leader = _leaders(members)[0]
    standby = next(m for m in members if m is not leader)
    await wait_until(lambda: leader.evaluations >= 2, what="the leader evaluating")
    assert standby.evaluations == 0
    for m, expected in ((leader, 1.0), (standby, 0.0)):
        registry = m.collector.registry
        assert registry.get_sample_value("capwatch_collector_leader") == expected
    token = leader.collector.registry.get_sample_value("capwatch_collector_leader_token")
    assert token is not None
    assert token >= 1


async def test_on_takeover_the_new_leader_sees_every_node_and_the_old_stops_at_once(
    members: list[_Member], mosquitto: MosquittoBroker
) -> None:
    """The leader crashes (no release): within the lease the other leads; its live view
    has every node (its own share, the store's, and the leader's QoS 0 feed), and it
    evaluates; the crashed one evaluated nothing more after its end."""
    await wait_until(lambda: len(_leaders(members)) == 1, what="one leader")
    old = _leaders(members)[0]
    new = next(m for m in members if m is not old)
    sim = FleetSimulator(8, gpus_per_node=1, seed=3, interval_s=1)
    stop = asyncio.Event()
    publishing = asyncio.create_task(
        publish_fleet(fast_mqtt(mosquitto), sim, stop=stop, start_ts=time.time())
    )
    try:
        await wait_until(lambda: len(old.collector.live) == 8, what="the old leader's view")
        evaluations_at_crash = old.evaluations
        crashed = time.monotonic()
        await old.crash()
        await wait_until(lambda: new.leading, timeout_s=_LEASE_S + 5, what="takeover")
        assert time.monotonic() - crashed <= _LEASE_S + 2
        before = new.evaluations
        await wait_until(lambda: new.evaluations > before, what="the new leader evaluating")
        start = time.time()
        # Every node's samples reach the new leader's view, not only its share's.
        await wait_until(
            lambda: (
                all(
                    st.sample is not None and st.sample.ts >= start - 0.5
                    for st in new.collector.live.nodes()
                )
                and len(new.collector.live) == 8
            ),
            what="a fresh sample of every node in the new leader's view",
        )
        assert old.evaluations == evaluations_at_crash
    finally:
        stop.set()
        await publishing


async def test_each_term_of_a_leader_starts_its_governance_job_afresh(
    mosquitto: MosquittoBroker, postgres_url: str, tmp_path: Path
) -> None:
    """A collector's lease ends under it (the database's clock says so: as after a stall
    longer than the lease) and it is elected again, a new term: its governance job loads
    the state again though nothing changed, as a new process does, not the last term's
    (:meth:`GovernanceJob.new_term`, called by ``_lead`` at each term, beside the ledger
    job's), so it also takes back the GPU-hours another leader's term left in the store."""
    db = tmp_path / "a.db"
    member = _Member("a", fast_mqtt(mosquitto), postgres_url, db)
    try:
        async with asyncio.timeout(15):
            await member.collector.connected.wait()
        await wait_until(lambda: member.leading, what="elected")
        role = member.collector.role
        assert role is not None
        assert role.fence is not None
        first = role.fence
        with Command(db, now=time.time()) as tx:
            tx.governance.put_tenant("acme", None, 0)
        gov = member.collector.governance
        await wait_until(lambda: gov.loads >= 1, what="the tenant loaded")
        loads = gov.loads
        with psycopg.connect(postgres_url, autocommit=True) as pg:
            pg.execute("UPDATE capwatch_leader SET expires_at = now()")
        await wait_until(lambda: not first.active, timeout_s=_LEASE_S + 2, what="term ended")
        await wait_until(
            lambda: member.leading and role.fence is not first, timeout_s=15, what="re-elected"
        )
        await wait_until(lambda: gov.loads > loads, what="the state loaded again")
        assert gov.loads == loads + 1
    finally:
        await member.stop()


async def test_each_term_of_a_leader_runs_its_ledger_as_soon_as_a_new_process_would(
    mosquitto: MosquittoBroker, postgres_url: str, tmp_path: Path
) -> None:
    """A term's evaluator waits each job's ``interval_s`` before its first run. The ledger's
    of a new process is ``first_interval_s`` (10 s: the hours an outage left dirty come
    soon); after a run it is ``ledger_interval_s`` (300 s). A collector elected again runs
    its ledger as soon as a new process would (:meth:`LedgerJob.new_term`, called by
    ``_lead`` at each term), not 300 s after its last term's last run."""
    member = _Member("a", fast_mqtt(mosquitto), postgres_url, tmp_path / "a.db")
    ledger = member.collector.ledger
    assert ledger is not None
    try:
        await wait_until(lambda: member.leading, what="elected")
        await wait_until(lambda: ledger.runs >= 1, timeout_s=20, what="the first term's run")
        runs = ledger.runs
        role = member.collector.role
        assert role is not None
        first = role.fence
        assert first is not None
        with psycopg.connect(postgres_url, autocommit=True) as pg:
            pg.execute("UPDATE capwatch_leader SET expires_at = now()")
        await wait_until(lambda: not first.active, timeout_s=_LEASE_S + 2, what="term ended")
        await wait_until(
            lambda: member.leading and role.fence is not first, timeout_s=15, what="re-elected"
        )
        await wait_until(lambda: ledger.runs > runs, timeout_s=20, what="the new term's run")
    finally:
        await member.stop()
