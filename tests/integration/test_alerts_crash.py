"""A collector killed with SIGKILL while an alert fires and its webhook is still pending."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.localbroker import MosquittoBroker
from shared.schema import XidEvent, encode
from shared.topics import sample_topic
from tests.collector.alerts.receiver import Answer, Receiver, Request
from tests.helpers import db_rows, wait_until

pytestmark = pytest.mark.integration

_HOT_C = 95.0
_HOT_GPU = 3


def _config(path: Path, receiver_url: str) -> Path:
    # expected_interval_s 1: the restored alert's hold (stale_intervals 3 x 1 s, plus two
    # evaluations) is 4 s.
    path.write_text(
        f"""\
expected_interval_s = 1.0

[alerts]
eval_interval_s = 0.5
gpu_temp_for_s = 0
gpu_temp_keep_firing_for_s = 0

[[receivers]]
name = "ops"
url = "{receiver_url}"
timeout_s = 5
"""
    )
    return path


def _collector(
    broker: MosquittoBroker, config: Path, db: Path, log: Path
) -> subprocess.Popen[bytes]:
    argv = [
        str(Path(sys.executable).with_name("collector")),
        "run",
        "--config",
        str(config),
        "--db",
        str(db),
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        "--log-level",
        "info",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


class _HotNodes:
    """Two simulated nodes, each sending a sample every 0.25 s while the test runs (an agent
    keeps reporting while its collector is down); GPU 3 runs hot on the nodes in ``hot``,
    GPU 5 reports XID 79 on the nodes in ``xid``."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.sim = FleetSimulator(2, gpus_per_node=8, seed=11, interval_s=0.25)
        self.hot: set[str] = set()
        self.xid: set[str] = set()
        self._seq = 0

    def _payload(self, i: int) -> bytes:
        sample = self.sim.sample(i, time.time(), self._seq)
        if sample.node in self.hot:
            gpus = [
                msgspec.structs.replace(g, temp_c=_HOT_C) if g.index == _HOT_GPU else g
                for g in sample.gpus
            ]
            sample = msgspec.structs.replace(sample, gpus=gpus)
        if sample.node in self.xid:
            xids = [XidEvent(gpu_index=5, xid=79, ts=sample.ts)]
            sample = msgspec.structs.replace(sample, xids=xids)
        return encode(sample)

    async def _publish_forever(self) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port, identifier="hot") as client:
            while True:
                for i, node in enumerate(self.sim.node_ids):
                    await client.publish(sample_topic(node), self._payload(i), qos=1)
                self._seq += 1
                await asyncio.sleep(self.sim.interval_s)  # the agent's cadence, not a wait

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Publish in the background until the block ends."""
        task = asyncio.create_task(self._publish_forever(), name="hot-nodes")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _about(requests: list[Request], fingerprint: str) -> list[Request]:
    """The requests about one alert."""
    return [r for r in requests if json.loads(r.body)["alerts"][0]["fingerprint"] == fingerprint]


async def test_sigkill_with_a_pending_delivery_then_restart_delivers_once_and_stays_quiet(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Kill -9 while GpuTemperature fires and its webhook gets 503s; the next collector
    delivers that notification once, same Idempotency-Key, and does not announce it again."""
    db, log = tmp_path / "capwatch.db", tmp_path / "collector.log"
    nodes = _HotNodes(mosquitto)
    first, marker = nodes.sim.node_ids
    rx = Receiver(script=[Answer(503, body=b"busy")] * 10_000)
    with rx.serve():
        config = _config(tmp_path / "collector.toml", rx.url)
        proc = _collector(mosquitto, config, db, log)
        try:
            await wait_until(
                lambda: bool(db_rows(db, "SELECT value FROM meta WHERE key LIKE 'mqtt_session %'")),
                what="collector subscribed (its session is remembered)",
            )
            nodes.hot.add(first)
            async with nodes.running():
                await wait_until(
                    lambda: (
                        db_rows(db, "SELECT state FROM alerts WHERE rule = 'GpuTemperature'")
                        == [("firing",)]
                    ),
                    what="GpuTemperature firing in the store",
                )
                # Two 503s seen and at least one recorded: the delivery is pending mid-retry.
                await wait_until(
                    lambda: (
                        len(rx.received()) >= 2
                        and bool(
                            db_rows(
                                db,
                                "SELECT 1 FROM outbox WHERE state = 'pending' AND attempts >= 1",
                            )
                        )
                    ),
                    what="the firing notification pending after 503s",
                )
                proc.kill()  # no chance to deliver, record or clean up anything
                proc.wait(timeout=20)

                ((fingerprint, key, status, state),) = db_rows(
                    db,
                    "SELECT fingerprint, uuid, status, state FROM outbox "
                    "WHERE rule = 'GpuTemperature'",
                )
                assert (status, state) == ("firing", "pending")
                before = rx.received()
                assert {r.headers["idempotency-key"] for r in _about(before, fingerprint)} == {key}
                rx.script.clear()  # the receiver recovers: 200 from now on

                proc = _collector(mosquitto, config, db, log)
                # A new alert after the restart marks an evaluation that saw the first node's
                # samples again: had the restore failed, its re-announcement is in the outbox
                # by then (written in the same transaction as, or before, the marker's). The
                # marker is another rule (GpuXid), so routes grouping by alertname (group_wait
                # 5 s by default) treat it as a new group, not as an addition to GpuTemperature's.
                nodes.xid.add(marker)
                await wait_until(
                    lambda: bool(
                        db_rows(
                            db,
                            "SELECT 1 FROM outbox WHERE fingerprint != ? AND status = 'firing'",
                            (fingerprint,),
                        )
                    ),
                    timeout_s=30,
                    what="the marker alert firing after the restart",
                )
                await wait_until(
                    lambda: (
                        db_rows(db, "SELECT DISTINCT state FROM outbox") == [("delivered",)]
                        and len(rx.received()) >= len(before) + 2
                    ),
                    timeout_s=30,
                    what="every notification delivered",
                )
                firing = db_rows(
                    db, "SELECT state FROM alerts WHERE fingerprint = ?", (fingerprint,)
                )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
    assert code == 0, log.read_text()  # the restarted collector stops cleanly

    after = rx.received()[len(before) :]
    # Exactly one request about the alert after the restart: the pending notification,
    # answered 200, under the key its 503 attempts carried; nothing re-announced it.
    about = _about(after, fingerprint)
    assert [r.headers["idempotency-key"] for r in about] == [key]
    delivered = about[0]
    body = json.loads(delivered.body)
    assert body["status"] == "firing"
    assert body["alerts"][0]["labels"]["node"] == first
    assert body["alerts"][0]["labels"]["gpu"] == str(_HOT_GPU)
    assert db_rows(db, "SELECT count(*) FROM outbox WHERE fingerprint = ?", (fingerprint,)) == [
        (1,)
    ]
    assert firing == [("firing",)]
    assert db_rows(
        db, "SELECT state FROM alert_history WHERE fingerprint = ? ORDER BY id", (fingerprint,)
    ) == [("firing",)]
    # ... while the marker, new after the restart, was announced as usual.
    (marked,) = [json.loads(r.body) for r in after if r not in _about(after, fingerprint)]
    assert marked["alerts"][0]["labels"]["node"] == marker
    assert marked["alerts"][0]["labels"]["alertname"] == "GpuXid"
