"""The site setup end to end: two ``collector run`` processes in one share group on one real
PostgreSQL store, a real Mosquitto, and a real webhook receiver on loopback that answers 503.

First test: the leader is SIGKILLed while its alert fires and its notification is being retried; the
other collector takes over. The receiver then answers 200: exactly one notification is
delivered (the outbox row the dead leader left pending, with its Idempotency-Key), the
firing alert is not notified again. A fleet burst published while the leader is dead is
shared between the survivor and the dead member's session; the killed member, started
again with its client id, resumes its session and stores that share: every fleet sample is
stored exactly once.

Second test: PostgreSQL restarts under both members. Each writer retries its batch after
reconnecting, the leader steps down while it cannot renew, one is elected again once the
server is back, and every sample published before, during and after is stored exactly once
(none was acknowledged to the broker before its commit).

(The fleet's nodes start after the hot node's name: a fleet from index 0 reuses it, and a
count of the fleet's rows "other than the hot node" then misses five of them for good —
what once looked like a restarted member's commits showing only at its stop.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.localbroker import MosquittoBroker, free_port
from collector.localcollector import metric, start_member
from collector.localpg import LocalPostgres
from tests.collector.alerts.receiver import Answer, Receiver, Request
from tests.helpers import wait_until
from tests.integration.conftest import HotGpuNode, fast_mqtt

pytestmark = pytest.mark.integration

_LEASE_S = 2.0
_UNAVAILABLE = Answer(503, {"Retry-After": "1"}, b"busy")


def _config(path: Path, receiver_url: str) -> Path:
    path.write_text(
        f"""
[alerts]
eval_interval_s = 0.5
gpu_temp_for_s = 0.0
gpu_temp_keep_firing_for_s = 0.0

[election]
lease_s = {_LEASE_S}
poll_s = 0.1

[[receivers]]
name = "ops"
url = "{receiver_url}"
timeout_s = 5

[[routes]]
group_wait = "0s"
group_interval = "0s"
repeat_interval = "1h"
"""
    )
    return path


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())


def _fleet_counts(url: str, nodes: list[str], per_node: int = 5) -> tuple[int, int, int]:
    """The fleet's stored samples: rows, distinct ``(node, ts_ms)``, nodes with
    ``per_node`` rows."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (node, ts_ms)), "
            "(SELECT count(*) FROM (SELECT node FROM samples WHERE node = ANY(%s) "
            "GROUP BY node HAVING count(*) = %s) AS full_nodes) "
            "FROM samples WHERE node = ANY(%s)",
            (nodes, per_node, nodes),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@contextlib.contextmanager
def _members(
    url: str, broker: MosquittoBroker, config: Path, tmp_path: Path
) -> Iterator[tuple[dict[str, tuple[int, subprocess.Popen[bytes]]], Callable[[str], None]]]:
    """Collectors a and b on the shared store: name -> (metrics port, process), and the
    function that starts one (again, on its port)."""
    members: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}

    def start(name: str) -> None:
        port = members[name][0] if name in members else free_port("127.0.0.1")
        proc = start_member(
            name,
            url,
            broker.port,
            port,
            log=tmp_path / f"{name}.log",
            env={**os.environ},
            extra=["--config", str(config)],
            log_level="info",
        )
        members[name] = (port, proc)

    start("a")
    start("b")
    try:
        yield members, start
    finally:
        for _, proc in members.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


@contextlib.asynccontextmanager
async def _keep_hot(node: HotGpuNode) -> AsyncIterator[None]:
    """GPU 3 at 95 C every 0.5 s, so the alert keeps firing and the node stays fresh."""

    async def loop() -> None:
        while True:
            await node.publish(95.0)
            await asyncio.sleep(0.5)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _leader(members: dict[str, tuple[int, subprocess.Popen[bytes]]]) -> str | None:
    for name, (port, proc) in members.items():
        if proc.poll() is None and metric(port, "capwatch_collector_leader") == 1:
            return name
    return None


async def test_sigkill_of_the_leader_while_its_webhook_gets_503_delivers_once(
    mosquitto: MosquittoBroker, postgres_url: str, tmp_path: Path
) -> None:
    rx = Receiver(script=[_UNAVAILABLE] * 10_000)
    with rx.serve():
        config = _config(tmp_path / "collector.toml", rx.url)
        with _members(postgres_url, mosquitto, config, tmp_path) as (members, start):
            await wait_until(lambda: _leader(members) is not None, what="a leader")
            leader = _leader(members)
            assert leader is not None
            survivor = "b" if leader == "a" else "a"
            hot = HotGpuNode(mosquitto)
            async with _keep_hot(hot):
                await wait_until(lambda: len(rx.received()) >= 2, what="503s to the leader")
                members[leader][1].send_signal(signal.SIGKILL)
                members[leader][1].wait(timeout=10)
                # Published while the leader is dead: half of it waits in its session.
                fleet = FleetSimulator(40, gpus_per_node=2, seed=9, interval_s=1, first_index=1)
                assert hot.node not in fleet.node_ids
                await publish_fleet(fast_mqtt(mosquitto), fleet, ticks=5, burst=True)
                await wait_until(lambda: _leader(members) == survivor, what="the takeover")
                tried = rx.script_answers([])  # the receiver is back: 200 from now on
                await wait_until(
                    lambda: _rows(postgres_url, "SELECT state FROM outbox") == [("delivered",)],
                    what="the notification recorded delivered",
                )
                await asyncio.sleep(6 * 0.5)  # several evaluations of the firing alert
                waiting = 40 * 5 - _fleet_counts(postgres_url, fleet.node_ids)[0]
                assert waiting > 0, "part of the fleet waits in the dead member's session"
                start(leader)  # resumes its session: the share waiting there is stored
                await wait_until(
                    lambda: _fleet_counts(postgres_url, fleet.node_ids)[0] >= 40 * 5,
                    what="every fleet sample stored",
                    timeout_s=30,
                )

    def hot_firing(requests: list[Request]) -> list[Request]:
        return [
            r
            for r in requests
            if "GpuTemperature" in r.body.decode(errors="replace")
            and json.loads(r.body)["status"] == "firing"
        ]

    firing = hot_firing(rx.received())
    assert len({r.headers["idempotency-key"] for r in firing}) == 1, (
        "one notification, sent by both leaders with the same key"
    )
    assert len(firing) == len(hot_firing(rx.received()[:tried])) + 1, (
        "after the takeover: one request, answered 200"
    )
    assert _rows(
        postgres_url,
        "SELECT count(*) FROM outbox WHERE rule = 'GpuTemperature' AND status = 'firing'",
    ) == [(1,)], "no re-notify"
    assert _fleet_counts(postgres_url, fleet.node_ids) == (40 * 5, 40 * 5, 40), (
        "every fleet sample stored once, 5 of each node"
    )


async def test_postgresql_restarting_under_two_members_loses_nothing_and_reelects(
    mosquitto: MosquittoBroker,
    postgres_server: LocalPostgres,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """Both members reconnect, the leader steps down while the server is away and one is
    elected again, and every fleet sample is stored once."""
    rx = Receiver()
    fleet = FleetSimulator(20, gpus_per_node=2, seed=11, interval_s=1, first_index=1)
    now = time.time()

    def stored() -> tuple[int, int, int]:
        return _fleet_counts(postgres_url, fleet.node_ids, per_node=12)

    with (
        rx.serve(),
        _members(postgres_url, mosquitto, _config(tmp_path / "c.toml", rx.url), tmp_path) as (
            members,
            _start,
        ),
    ):
        await wait_until(lambda: _leader(members) is not None, what="a leader")
        first = await publish_fleet(
            fast_mqtt(mosquitto), fleet, ticks=4, burst=True, start_ts=now - 60
        )
        await wait_until(lambda: stored()[0] == first.published, what="the first burst")
        postgres_server.stop()
        try:
            second = await publish_fleet(
                fast_mqtt(mosquitto), fleet, ticks=4, burst=True, start_ts=now - 50
            )
            await wait_until(
                lambda: all(
                    (metric(port, "capwatch_collector_store_unavailable_total") or 0) >= 1
                    for port, _ in members.values()
                ),
                what="both writers finding the store away",
            )
            await wait_until(lambda: _leader(members) is None, what="the leader stepping down")
        finally:
            postgres_server.start()
        await wait_until(lambda: _leader(members) is not None, timeout_s=30, what="a new leader")
        total = first.published + second.published
        await wait_until(lambda: stored()[0] == total, timeout_s=60, what=f"{total} samples")
        third = await publish_fleet(
            fast_mqtt(mosquitto), fleet, ticks=4, burst=True, start_ts=now - 40
        )
        await wait_until(
            lambda: stored()[0] == total + third.published, what="ingest after the restart"
        )
        assert all(proc.poll() is None for _, proc in members.values()), "both still run"
        assert sum(_leader_flags(members)) == 1, "one leader"
    assert stored() == (20 * 12, 20 * 12, 20), "every sample stored once, 12 of each node"


def _leader_flags(members: dict[str, tuple[int, subprocess.Popen[bytes]]]) -> list[int]:
    return [int(metric(port, "capwatch_collector_leader") or 0) for port, _ in members.values()]
