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

Third test: NodeSamplesMissing across a takeover, clean (SIGTERM) or not (SIGKILL). The broker
hands each node's samples to the members in turn, so no member's own share is a node's whole
stream (the leader's QoS 0 feed is): the new leader must not fire it for the samples it did not
see (the dead member's share waits in its broker session), and must still fire it for an agent
that skips seq numbers. The fleet has an odd number of nodes: the broker's round-robin then
gives each node's samples to each member in turn (with an even number it could hand each node
to one member for good, and a standby would see whole streams by chance).

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

import aiomqtt
import psycopg
import pytest

from agent.simulate import FleetSimulator, publish_fleet
from collector.localbroker import MosquittoBroker, free_port
from collector.localcollector import metric, start_member
from collector.localpg import LocalPostgres
from shared.schema import encode
from shared.topics import sample_topic
from tests.collector.alerts.receiver import Answer, Receiver, Request
from tests.helpers import wait_until
from tests.integration.conftest import HotGpuNode, fast_mqtt

pytestmark = pytest.mark.integration

_LEASE_S = 2.0
_UNAVAILABLE = Answer(503, {"Retry-After": "1"}, b"busy")
_EVALUATIONS = "capwatch_collector_alert_evaluations_total"
_NODES = 5


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


def _missing_alerts(url: str) -> dict[str, str]:
    """NodeSamplesMissing per node as the store holds it (state, or ``resolved`` for one
    only in the history), whichever leader recorded it."""
    with psycopg.connect(url) as conn:
        now = conn.execute(
            "SELECT labels, state FROM alerts WHERE rule = 'NodeSamplesMissing'"
        ).fetchall()
        past = conn.execute(
            "SELECT labels FROM alert_history WHERE rule = 'NodeSamplesMissing'"
        ).fetchall()
    out = {json.loads(labels)["node"]: "resolved" for (labels,) in past}
    out.update({json.loads(labels)["node"]: str(state) for labels, state in now})
    return out


class _Fleet:
    """The fleet publishing a sample a node a second until :meth:`stop`."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.sim = FleetSimulator(_NODES, gpus_per_node=1, seed=11, interval_s=1, epoch=1)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            publish_fleet(fast_mqtt(broker), self.sim, stop=self._stop)
        )

    async def stop(self) -> int:
        """Stop publishing; the samples published."""
        self._stop.set()
        return (await self._task).published


async def _evaluations(port: int, n: int) -> None:
    """Wait for ``n`` more alert evaluations of the collector serving /metrics on ``port``."""
    first = metric(port, _EVALUATIONS) or 0.0
    await wait_until(
        lambda: (metric(port, _EVALUATIONS) or 0.0) >= first + n,
        what=f"{n} evaluations",
        timeout_s=20,
    )


async def _feed_on(log: Path, after: int) -> None:
    """Wait until the collector logging to ``log`` has its live feed (a line past byte
    ``after``): from then on it sees every sample."""
    await wait_until(lambda: b"mqtt_live_feed_on" in log.read_bytes()[after:], what="the live feed")


async def _skip_seqs(broker: MosquittoBroker) -> str:
    """An agent that numbers seq 0, 1, 2 then 7, 8 one second apart (4 samples never sent);
    its node's name."""
    sim = FleetSimulator(1, gpus_per_node=1, seed=5, interval_s=1, epoch=1, first_index=_NODES)
    node = sim.node_ids[0]
    now = time.time()
    async with aiomqtt.Client(broker.host, broker.port, identifier="gappy") as client:
        for seq in (0, 1, 2, 7, 8):
            sample = sim.sample(0, now - 10 + seq, seq)
            await client.publish(sample_topic(node), encode(sample), qos=1)
    return node


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_takeover_fires_no_samples_missing_and_a_real_gap_still_fires(
    mosquitto: MosquittoBroker, postgres_url: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """The fleet publishes; the leader stops (SIGTERM: the lease released; SIGKILL: its
    share of what follows waits in its broker session); the standby, which saw only its
    share of each node, takes over: no NodeSamplesMissing for the fleet. An agent skipping
    seq numbers then fires it on the new leader; the old member back stores its share and
    the fleet is still not missing anything."""
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[alerts]\neval_interval_s = 0.5\n[election]\nlease_s = {_LEASE_S}\npoll_s = 0.1\n"
    )
    with _members(postgres_url, mosquitto, config, tmp_path) as (members, start):
        await wait_until(lambda: _leader(members) is not None, what="a leader")
        old = _leader(members)
        assert old is not None
        new = "b" if old == "a" else "a"
        new_log = tmp_path / f"{new}.log"
        fleet = _Fleet(mosquitto)
        nodes = fleet.sim.node_ids
        try:
            # Long enough for the standby to hold several samples of each node.
            await asyncio.sleep(5)
            assert _missing_alerts(postgres_url) == {}, "none while the first leader leads"
            logged = new_log.stat().st_size
            members[old][1].send_signal(stop)
            members[old][1].wait(timeout=30)
            await wait_until(lambda: _leader(members) == new, what="the takeover", timeout_s=15)
            await _feed_on(new_log, logged)
            await _evaluations(members[new][0], 6)
            assert _missing_alerts(postgres_url) == {}, "nothing is missing at the takeover"

            gappy = await _skip_seqs(mosquitto)
            await wait_until(
                lambda: _missing_alerts(postgres_url) == {gappy: "firing"},
                what="NodeSamplesMissing firing for the node that skipped seq numbers only",
            )
            start(old)  # back: its session's share is stored, it stands by
            await asyncio.sleep(3)
        finally:
            published = await fleet.stop()
        await wait_until(
            lambda: _fleet_counts(postgres_url, nodes)[0] >= published,
            what="every fleet sample stored",
            timeout_s=30,
        )
        await _evaluations(members[new][0], 4)
    assert _missing_alerts(postgres_url) == {gappy: "firing"}
    assert _fleet_counts(postgres_url, nodes)[:2] == (published, published), "each once"
