"""Leader election on a real PostgreSQL: one lease row, a fencing token, the database's clock.

Lease times here are short (1-3 s) so the tests wait little; every wait is on a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from structlog.testing import capture_logs

from collector.localpg import LocalPostgres
from collector.paths import parse_target
from collector.role import Fence, Role
from collector.store.db import Store
from collector.store.leader import LeaderLease, Lease, check_token
from shared.clock import SystemClock
from shared.errors import NotLeaderError, StoreError
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


async def acquire_when_free(election: LeaderLease, holder: str, ttl_s: float) -> Lease:
    """Try every 0.1 s until the lease is ours (fails after 15 s)."""
    async with asyncio.timeout(15):
        while True:
            lease = await election.try_acquire(holder, ttl_s)
            if lease is not None:
                return lease
            await asyncio.sleep(0.1)


async def test_two_contenders_one_leader_and_the_token_goes_up_at_each_takeover(
    postgres_url: str,
) -> None:
    """a takes the lease; b is refused while it lasts and takes it once it has ended, with
    the next token; a can renew no more; a takes it back later with the one after."""
    async with LeaderLease(postgres_url) as a, LeaderLease(postgres_url) as b:
        first = await a.try_acquire("a", ttl_s=1.0)
        assert first is not None
        assert await b.try_acquire("b", ttl_s=1.0) is None
        assert await a.try_acquire("a", ttl_s=1.0) is None  # no second term while one holds
        current = await b.current()
        assert current is not None
        assert (current.holder, current.token) == ("a", first.token)
        second = await acquire_when_free(b, "b", ttl_s=1.0)
        assert second.token == first.token + 1
        assert await a.renew(first) is None  # deposed
        renewed = await b.renew(second)
        assert renewed is not None
        assert 0.5 < renewed.remaining_s <= 1.0
        await b.release(second)  # a clean stop: free at once
        third = await a.try_acquire("a", ttl_s=1.0)
        assert third is not None
        assert third.token == second.token + 1


async def test_a_deposed_leaders_fenced_write_fails_in_its_transaction(postgres_url: str) -> None:
    """check_token inside the old leader's transaction raises NotLeaderError once another
    took over; its write in that transaction is rolled back; the new leader's goes in."""
    async with LeaderLease(postgres_url) as a, LeaderLease(postgres_url) as b:
        old = await a.try_acquire("a", ttl_s=1.0)
        assert old is not None
        new = await acquire_when_free(b, "b", ttl_s=5.0)
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        await conn.execute("CREATE TABLE alert_state (id int PRIMARY KEY, state text)")
        await conn.commit()
        raised = await _fenced_insert(conn, old.token)
        assert raised is not None
        assert raised.token == old.token
        assert f"token {old.token}" in str(raised)
        async with conn.transaction():
            await check_token(conn, new.token)
            await conn.execute("INSERT INTO alert_state VALUES (2, 'firing-by-b')")
        cur = await conn.execute("SELECT state FROM alert_state ORDER BY id")
        assert await cur.fetchall() == [("firing-by-b",)]


async def _fenced_insert(
    conn: psycopg.AsyncConnection[object], token: int
) -> NotLeaderError | None:
    """A write and the fence in one transaction, as a leader's state change does."""
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO alert_state VALUES (1, 'firing-by-a')")
            await check_token(conn, token)
    except NotLeaderError as exc:
        return exc
    return None


async def test_a_takeover_waits_for_the_old_leaders_fenced_transaction(postgres_url: str) -> None:
    """A fenced transaction that began while its term held keeps the row share-locked: the
    takeover (after the lease ended) completes only once that transaction has committed."""
    async with LeaderLease(postgres_url) as a, LeaderLease(postgres_url) as b:
        old = await a.try_acquire("a", ttl_s=1.0)
        assert old is not None
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            async with conn.transaction():
                await check_token(conn, old.token)
                takeover = asyncio.create_task(acquire_when_free(b, "b", ttl_s=5.0))
                await asyncio.sleep(2.0)  # the lease has ended; b's UPDATE waits on the lock
                assert not takeover.done()
            new = await takeover
    assert new.token == old.token + 1


async def test_a_cut_election_connection_reconnects_and_renews(
    postgres_url: str, postgres_server: LocalPostgres
) -> None:
    """pg_terminate_backend of the election's connection: that call fails (not fatally),
    the next one reconnects, and the lease, still ours, is renewed."""
    async with LeaderLease(postgres_url) as a:
        lease = await a.try_acquire("a", ttl_s=10.0)
        assert lease is not None
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreError) as failed:
            await a.renew(lease)
        assert not failed.value.fatal
        assert await a.renew(lease) is not None


# --- the role loop on the real lease ------------------------------------------------------


class _Contender:
    """A :class:`Role` on the real lease whose ``lead`` records its terms."""

    def __init__(self, url: str, holder: str, *, lease_s: float) -> None:
        self.election = LeaderLease(url, timeout_s=1.0)
        self.role = Role(holder, SystemClock(), election=self.election, lease_s=lease_s, poll_s=0.1)
        self.fences: list[Fence] = []
        self.until = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _lead(self, fence: Fence) -> None:
        self.fences.append(fence)
        await asyncio.Event().wait()  # the leader's jobs: until cancelled

    def start(self) -> None:
        self.task = asyncio.create_task(self.role.run(self._lead, self.until), name="role")

    async def stop(self) -> None:
        self.until.set()
        if self.task is not None:
            async with asyncio.timeout(10):
                await self.task
        await self.election.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def _contenders(url: str, *, lease_s: float) -> AsyncIterator[tuple[_Contender, ...]]:
    both = (_Contender(url, "a", lease_s=lease_s), _Contender(url, "b", lease_s=lease_s))
    for c in both:
        c.start()
    try:
        yield both
    finally:
        for c in both:
            await c.stop()


def _leaders(contenders: tuple[_Contender, ...]) -> list[str]:
    return [c.role.holder for c in contenders if c.role.leading]


async def test_roles_elect_exactly_one_and_a_clean_stop_hands_over_at_once(
    postgres_url: str,
) -> None:
    """Two roles: one leads, the other stands by; stopping the leader releases the lease
    and the other leads within its poll interval, with the next token."""
    async with _contenders(postgres_url, lease_s=30.0) as both:
        await wait_until(lambda: len(_leaders(both)) == 1, what="one leader")
        await asyncio.sleep(0.5)  # the standby keeps polling and stays standby
        assert len(_leaders(both)) == 1
        first = next(c for c in both if c.role.leading)
        other = next(c for c in both if c is not first)
        token = first.fences[0].token
        await first.stop()
        assert not first.fences[0].active
        # The lease lasts 30 s: only the release explains a takeover within 5 s.
        await wait_until(lambda: other.role.leading, timeout_s=5, what="handover")
        assert other.fences[-1].token == (token or 0) + 1


async def test_a_leader_cut_from_postgres_stops_within_the_lease_and_the_other_takes_over(
    postgres_url: str, postgres_server: LocalPostgres
) -> None:
    """PostgreSQL restarts and stays down longer than the lease: the leader's term ends by
    its own clock within the lease time (its fence closes); once the database is back, one
    collector is elected again with a higher token."""
    lease_s = 2.0
    async with _contenders(postgres_url, lease_s=lease_s) as both:
        await wait_until(lambda: len(_leaders(both)) == 1, what="one leader")
        leader = next(c for c in both if c.role.leading)
        fence = leader.fences[-1]
        loop = asyncio.get_running_loop()
        down = loop.time()
        restart = loop.run_in_executor(None, postgres_server.restart, lease_s + 2.0)
        await wait_until(lambda: not fence.active, timeout_s=lease_s + 1.5, what="term ended")
        assert loop.time() - down <= lease_s + 0.5
        await restart
        await wait_until(lambda: len(_leaders(both)) == 1, timeout_s=15, what="re-elected")
        now_leading = next(c for c in both if c.role.leading)
        assert now_leading.fences[-1].token is not None
        assert now_leading.fences[-1].token > (fence.token or 0)


async def test_the_lease_table_is_a_migration_of_the_store(postgres_url: str) -> None:
    """A new PostgreSQL store has capwatch_leader before any election ran; an election on
    it then works (the table the lease would create is the migration's)."""
    async with Store(parse_target(postgres_url)) as store:
        assert "0022_leader_lease" in await store.migrations()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('capwatch_leader')").fetchone() == (
            "capwatch_leader",
        )
    async with LeaderLease(postgres_url) as election:
        assert await election.try_acquire("a", ttl_s=1.0) is not None


async def test_collectors_starting_together_on_a_separate_election_database_all_elect(
    postgres_server: LocalPostgres,
) -> None:
    """An ``[election] url`` database is not the store's: each lease creates the table
    there. Many at once, each on a fresh database: none fails, one holds the lease."""
    for _ in range(5):
        url = postgres_server.create_database(f"election_{uuid.uuid4().hex[:12]}")
        leases = [LeaderLease(url) for _ in range(8)]
        try:
            got = await asyncio.gather(*(e.try_acquire(f"c{i}", 5.0) for i, e in enumerate(leases)))
        finally:
            for e in leases:
                await e.__aexit__(None, None, None)
        assert sum(lease is not None for lease in got) == 1


async def test_an_unreachable_election_database_is_logged_once_per_outage(tmp_path: Path) -> None:
    """A standby tries every poll_s (a tenth of the lease): while the database is away it
    says so once, not at every try, and once more when it is back, then leads."""
    with LocalPostgres(tmp_path / "pg") as server:
        contender = _Contender(server.url, "a", lease_s=2.0)
        server.stop()
        with capture_logs() as logs:
            contender.start()
            await asyncio.sleep(1.5)  # ~15 tries against a stopped server
            server.start()
            await wait_until(lambda: contender.role.leading, timeout_s=15, what="elected")
            await contender.stop()
    events = [e["event"] for e in logs]
    assert events.count("leader_election_failed") == 1, events
    assert events.count("leader_election_reachable") == 1, events
