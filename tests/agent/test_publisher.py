"""The publisher against a scripted broker on loopback: refused credentials, backoff."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from agent.publisher import OVER_PACE_SAMPLES, Publisher, next_backoff
from agent.spool import Spool
from collector.localbroker import MosquittoBroker
from shared.budget import NodeBudget
from shared.schema import Watermark, encode
from shared.settings import MqttSettings
from tests.helpers import wait_until

_MIN_S, _MAX_S = 0.05, 0.4
"""Reconnect backoff bounds: short, so a test sees many attempts."""


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT packet: (first byte, body)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


class _ScriptedBroker:
    """Answers each CONNECT with the CONNACK return code ``answer(n)`` gives for the n-th
    connection (1-based); after an accepted one, acknowledges ``pubacks`` QoS 1 publishes,
    then hangs up."""

    def __init__(self, answer: Callable[[int], int], *, pubacks: int = 0) -> None:
        self.answer = answer
        self.pubacks = pubacks
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        code = self.answer(self.connections)
        try:
            await _read_packet(reader)  # CONNECT
            writer.write(bytes([0x20, 2, 0, code]))
            await writer.drain()
            for _ in range(self.pubacks if code == 0 else 0):
                first, body = await _read_packet(reader)
                assert first >> 4 == 3, "a PUBLISH"
                topic_len = int.from_bytes(body[:2], "big")
                packet_id = body[2 + topic_len : 4 + topic_len]
                writer.write(b"\x40\x02" + packet_id)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _run_publisher(
    broker: _ScriptedBroker,
    until: Callable[[Publisher, list[MutableMapping[str, Any]]], bool],
    spool_dir: Path,
    *,
    password: str | None = None,
) -> list[MutableMapping[str, Any]]:
    """Run a publisher (one buffered sample) against ``broker`` until ``until`` holds; its logs."""
    server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mqtt = MqttSettings(
        host="127.0.0.1",
        port=port,
        username="n1",
        password=None if password is None else SecretStr(password),
        reconnect_min_s=_MIN_S,
        reconnect_max_s=_MAX_S,
    )
    spool = Spool(spool_dir, max_bytes=1 << 20, max_age_s=3600.0)
    spool.open()
    spool.append(b"{}")
    publisher = Publisher(mqtt, "n1", spool, lambda: b"{}", time.time, publish_timeout_s=0.3)
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with server:
            task = asyncio.create_task(publisher.run(stop))
            await wait_until(lambda: until(publisher, logs), timeout_s=20, what="the publisher")
            assert not task.done()  # it keeps trying: never ends the agent
            stop.set()
            async with asyncio.timeout(10):
                await task
    return logs


@pytest.mark.parametrize("code", [4, 5], ids=["bad-username-or-password", "not-authorised"])
async def test_refused_credentials_are_an_error_naming_the_settings_and_retried(
    code: int, tmp_path: Path
) -> None:
    """CONNACK 4 or 5: ``mqtt_not_authorized`` at error level, naming mqtt.username and
    mqtt.password (never the password's value), and the publisher keeps retrying."""
    broker = _ScriptedBroker(lambda _: code)
    logs = await _run_publisher(
        broker, lambda _, __: broker.connections >= 3, tmp_path, password="s3cret-pw"
    )
    refused = [e for e in logs if e["event"] == "mqtt_not_authorized"]
    assert len(refused) >= 2
    assert {e["log_level"] for e in refused} == {"error"}
    assert "mqtt.username" in refused[0]["fix"]
    assert "mqtt.password" in refused[0]["fix"]
    assert refused[0]["username"] == "n1"
    assert [e for e in logs if e["event"] == "mqtt_disconnected"] == []
    assert "s3cret-pw" not in repr(logs)


async def test_other_refusals_stay_warnings(tmp_path: Path) -> None:
    """CONNACK 3 (server unavailable) is a transient ``mqtt_disconnected`` warning."""
    broker = _ScriptedBroker(lambda _: 3)
    logs = await _run_publisher(broker, lambda _, __: broker.connections >= 2, tmp_path)
    events = {(e["event"], e["log_level"]) for e in logs if e["event"].startswith("mqtt_")}
    assert events == {("mqtt_disconnected", "warning")}


async def test_backoff_starts_again_from_the_minimum_after_a_good_connection(
    tmp_path: Path,
) -> None:
    """Ten refusals grow the reconnect delay; one good connection resets it, so the next
    loss is retried after reconnect_min_s."""
    refusals = 10
    broker = _ScriptedBroker(lambda n: 0 if n == refusals + 1 else 3, pubacks=2)

    def lost_after_connect(publisher: Publisher, logs: list[MutableMapping[str, Any]]) -> bool:
        lost = [e for e in logs if e["event"] == "mqtt_disconnected"]
        return publisher.connects == 1 and len(lost) > refusals

    logs = await _run_publisher(broker, lost_after_connect, tmp_path)
    delays = [e["retry_in_s"] for e in logs if e["event"] == "mqtt_disconnected"]
    assert delays[0] == _MIN_S
    # It had grown: full jitter draws each later delay in [min, cap], so one draw (logged to
    # 10 ms) may land on the minimum (~1.4 % at cap 0.4 s: CI saw it); nine cannot all.
    assert max(delays[1:refusals]) > _MIN_S
    assert delays[refusals] == _MIN_S  # the retry after the good connection


def test_reconnect_delays_are_jittered_and_capped_at_a_few_seconds() -> None:
    """The first retry waits reconnect_min_s; later ones are spread over [min, cap], and the
    default cap brings an agent back within 5 s of the broker's return."""
    assert MqttSettings().reconnect_max_s == 5.0
    assert next_backoff(0, 0.5, 5.0) == 0.5
    draws = [next_backoff(attempt, 0.5, 5.0) for attempt in range(1, 40) for _ in range(20)]
    assert min(draws) >= 0.5
    assert max(draws) <= 5.0
    late = [next_backoff(10, 0.5, 5.0) for _ in range(200)]
    assert len(set(late)) > 150  # jittered: a fleet does not come back in the same instant
    assert max(late) > 4.0
    assert min(late) < 1.5


def _watermark_publisher(tmp_path: Path, *, fresh: bool = False) -> Publisher:
    """Five samples acknowledged and held, in epoch 2 (two starts before this one), or in a
    ``fresh`` directory's first epoch."""
    if not fresh:
        (tmp_path / "spool").mkdir()
        (tmp_path / "spool" / "epoch").write_text("1\n")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20, max_age_s=3600, hold_s=60)
    spool.open()
    for seq in range(5):
        spool.append(encode_sample(epoch=spool.epoch, seq=seq))
    while (record := spool.next()) is not None:
        spool.holding = True
        spool.ack(record)
    return Publisher(MqttSettings(), "wm-node", spool, lambda: b"{}", time.time)


def encode_sample(*, epoch: int, seq: int) -> bytes:
    """Enough of a sample for the spool's (epoch, seq) key."""
    return msgspec.json.encode({"v": 1, "node": "wm-node", "seq": seq, "epoch": epoch})


def _mark(node: str, epoch: int, seq: int, top: int) -> bytes:
    return encode(Watermark(v=1, node=node, epoch=epoch, seq=seq, top=top))


def test_a_watermark_confirms_and_a_hole_asks_for_one_resend_per_value(tmp_path: Path) -> None:
    """(2, 1): two forgotten; (2, 1, top 4) twice: one resend asked; (2, 3, top 4): another."""
    pub = _watermark_publisher(tmp_path)
    pub.on_watermark(_mark("wm-node", 2, 1, 1))
    assert (len(pub.spool), pub.spool.unconfirmed) == (3, 3)
    pub.on_watermark(_mark("wm-node", 2, 1, 4))
    assert pub._resend
    pub._resend = False
    pub.on_watermark(_mark("wm-node", 2, 1, 4))
    assert not pub._resend  # the same watermark: already sent again for it
    pub.on_watermark(_mark("wm-node", 2, 3, 4))
    assert pub._resend
    assert pub.watermarks_heard == 4


def test_a_watermark_of_another_node_or_a_later_epoch_is_refused(tmp_path: Path) -> None:
    """Another node's (a broker delivering more than the ACL says) or one from an epoch this
    spool never reached (a wiped spool directory) confirms nothing."""
    pub = _watermark_publisher(tmp_path)
    with capture_logs() as logs:
        pub.on_watermark(_mark("other-node", 2, 4, 4))
        pub.on_watermark(_mark("wm-node", 9, 4, 4))
        pub.on_watermark(b"not json")
    assert (pub.spool.unconfirmed, pub.watermarks_refused, pub.watermarks_heard) == (5, 3, 0)
    assert [e["event"] for e in logs].count("watermark_refused") == 1  # then every 100th


_PACED = NodeBudget(messages_per_s=100, bytes_per_s=2_000_000, burst_s=1.0)
"""Published at 1 MB and 50 messages a second: at a 0.1 s interval, 100 KB a sample."""


async def _publish_paced(
    broker: MosquittoBroker, spool_dir: Path, sizes: list[int]
) -> list[MutableMapping[str, Any]]:
    """Publish spooled samples of ``sizes`` bytes at :data:`_PACED`, sampled every 0.1 s,
    to a real broker; the publisher's logs."""
    spool = Spool(spool_dir, max_bytes=64 << 20, max_age_s=3600.0)
    spool.open()
    for k, size in enumerate(sizes):
        spool.append(bytes([k % 256]) * size)
    mqtt = MqttSettings(host=broker.host, port=broker.port)
    publisher = Publisher(
        mqtt, "n1", spool, lambda: b"{}", time.time, budget=_PACED, interval_s=0.1
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(publisher.run(stop))
        try:
            await wait_until(lambda: publisher.published == len(sizes), what="all published")
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task
    spool.close()
    return logs


@pytest.mark.parametrize(
    "sizes",
    [[150_000] * 25, ([150_000] * (OVER_PACE_SAMPLES - 1) + [1_500_000 // OVER_PACE_SAMPLES]) * 3],
    ids=["every-sample-over", "over-on-average"],
)
async def test_samples_over_the_pace_are_said_once_naming_the_setting_and_value(
    sizes: list[int], mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Samples of 150 KB every 0.1 s at 1 MB/s (every one, or nine of ten) can never keep
    up: after ten, one warning naming ingest_budget.bytes_per_s and the value it needs
    (3 MB/s on average: the pace is half of it; written as the setting takes it, no
    separators), on the agent and the collector; not again."""
    logs = await _publish_paced(mosquitto, tmp_path / "spool", sizes)
    (warned,) = [e for e in logs if e["event"] == "samples_over_pace"]
    assert warned["log_level"] == "warning"
    assert warned["mean_sample_bytes"] == 150_000
    assert "ingest_budget.bytes_per_s (CAPWATCH_INGEST_BUDGET__BYTES_PER_S)" in warned["fix"]
    assert "at least 3000000 on this agent and on the collector" in warned["fix"]


async def test_large_samples_between_ones_that_fit_the_pace_are_not_warned_of(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """One sample of 150 KB every third, the others 10 KB: over the pace one by one, within
    it on average (57 KB an interval of 100 KB): nothing is said."""
    sizes = [150_000, 10_000, 10_000] * 8
    logs = await _publish_paced(mosquitto, tmp_path / "spool", sizes)
    assert [e for e in logs if e["event"] == "samples_over_pace"] == []


def test_the_old_runs_retained_watermark_confirms_nothing_of_a_wiped_spools_run(
    tmp_path: Path,
) -> None:
    """A node reinstalled: its agent's old run (epoch 0: a fresh directory counted from 0
    before) reached seq 9, and the broker keeps that watermark retained for the node. The
    new run's fresh spool starts past it (the wall clock in ms), so the old mark, heard at
    connect, passes none of the new run's held samples (at epoch 0 too it passed all five,
    never stored); the new run's own mark confirms them."""
    pub = _watermark_publisher(tmp_path, fresh=True)
    pub.on_watermark(_mark("wm-node", 0, 9, 9))
    assert (pub.spool.unconfirmed, pub.watermarks_refused) == (5, 0)
    pub.on_watermark(_mark("wm-node", pub.spool.epoch, 2, 2))
    assert (pub.spool.unconfirmed, pub.spool.confirmed) == (2, 3)
