"""The local brokers deliver what capwatch relies on: QoS 1, retained messages, last wills
and (Mosquitto) persistent sessions that outlive a disconnect and a broker restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from collector.localbroker import (
    EmbeddedBroker,
    LocalBroker,
    MosquittoBroker,
    amqtt_available,
    find_mosquitto,
    free_port,
    local_broker,
    wait_for_port,
)
from collector.retained import Login, clear_retained, node_topics
from collector.settings import CollectorMqttSettings
from shared.errors import CapwatchError, MqttWireError
from shared.topics import PREFIX, inventory_topic, sample_topic, status_topic, watermark_topic
from tests.helpers import skip_without_mosquitto

_STEP_S = 5.0
"""Bound of one network wait (connect, publish, next message)."""
_TEST_S = 30.0
"""Bound of a whole test body."""


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A running embedded (amqtt) broker; stopped after the test."""
    if not amqtt_available():
        pytest.skip("amqtt is not installed (pip install 'capwatch[broker]')")
    with EmbeddedBroker(tmp_path / "embedded") as broker:
        yield broker


@dataclass
class _Endpoint:
    host: str
    port: int


_DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_USERS = ("node-a", "node-b", "capwatch-collector", "capwatch-admin")


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[_Endpoint]:
    """Mosquitto running deploy/mosquitto.conf and deploy/mosquitto.acl, paths moved to tmp.

    Each user's password is ``pw-<username>``.
    """
    binary, passwd_tool = find_mosquitto(), shutil.which("mosquitto_passwd")
    if binary is None or passwd_tool is None:
        skip_without_mosquitto("mosquitto" if binary is None else "mosquitto_passwd")
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user in _USERS:
        subprocess.run([passwd_tool, "-b", str(passwd), user, f"pw-{user}"], check=True)
    port = free_port()
    moved = {
        "listener 1883 127.0.0.1": f"listener {port} 127.0.0.1",
        "user mosquitto": f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        "pid_file /run/mosquitto/mosquitto.pid": f"pid_file {tmp_path}/mosquitto.pid",
        "persistence_location /var/lib/mosquitto/": f"persistence_location {tmp_path}/",
        "password_file /etc/mosquitto/passwd": f"password_file {passwd}",
        "acl_file /etc/mosquitto/capwatch.acl": f"acl_file {_DEPLOY / 'mosquitto.acl'}",
        "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {tmp_path}/log",
    }
    lines = (_DEPLOY / "mosquitto.conf").read_text().splitlines()
    for old, new in moved.items():
        assert lines.count(old) == 1, f"deploy/mosquitto.conf no longer has {old!r}"
        lines[lines.index(old)] = new
    (tmp_path / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    with subprocess.Popen([binary, "-c", str(tmp_path / "mosquitto.conf")]) as proc:
        try:
            wait_for_port("127.0.0.1", port)
            yield _Endpoint("127.0.0.1", port)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=_TEST_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest) -> LocalBroker:
    """Each kind of local broker in turn."""
    started: LocalBroker = request.getfixturevalue(request.param)
    return started


def _client(
    broker: LocalBroker | _Endpoint,
    identifier: str,
    *,
    clean_session: bool | None = None,
    will: aiomqtt.Will | None = None,
    username: str | None = None,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=identifier,
        clean_session=clean_session,
        will=will,
        username=username,
        password=None if username is None else f"pw-{username}",
        timeout=_STEP_S,
    )


async def _next(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(_STEP_S):
        return await anext(client.messages)


async def _take(client: aiomqtt.Client, n: int) -> list[bytes]:
    payloads: list[bytes] = []
    for _ in range(n):
        message = await _next(client)
        assert isinstance(message.payload, bytes)
        payloads.append(message.payload)
    return payloads


async def test_qos1_message_reaches_subscriber(broker: LocalBroker) -> None:
    """A QoS 1 publish arrives once, unchanged, at QoS 1."""
    topic = sample_topic("node-a")
    async with asyncio.timeout(_TEST_S):
        async with _client(broker, "sub") as sub, _client(broker, "node-a") as pub:
            await sub.subscribe(f"{PREFIX}/+/sample", qos=1)
            await pub.publish(topic, b'{"seq":1}', qos=1)
            message = await _next(sub)
    assert message.topic.value == topic
    assert message.payload == b'{"seq":1}'
    assert message.qos == 1


async def test_retained_message_reaches_later_subscriber(broker: LocalBroker) -> None:
    """A retained inventory published before anyone listens reaches a later subscriber."""
    topic = inventory_topic("node-a")
    async with asyncio.timeout(_TEST_S):
        async with _client(broker, "node-a") as pub:
            await pub.publish(topic, b'{"gpus":8}', qos=1, retain=True)
        async with _client(broker, "late") as sub:
            await sub.subscribe(f"{PREFIX}/+/inventory", qos=1)
            message = await _next(sub)
    assert message.topic.value == topic
    assert message.payload == b'{"gpus":8}'
    assert message.retain is True


# A node agent in miniature: connects with a last will, says "online", then waits to be killed.
_DYING_CLIENT = """\
import asyncio, sys
import aiomqtt

async def main() -> None:
    host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    will = aiomqtt.Will(topic, b"offline", qos=1, retain=True)
    async with aiomqtt.Client(host, port, identifier="dying-node", will=will) as client:
        await client.publish(topic, b"online", qos=1, retain=True)
        print("online", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_last_will_is_published_when_client_is_killed(broker: LocalBroker) -> None:
    """SIGKILL on a client (no DISCONNECT sent) makes the broker publish its retained will."""
    topic = status_topic("dying-node")
    argv = [sys.executable, "-c", _DYING_CLIENT, broker.host, str(broker.port), topic]
    async with asyncio.timeout(_TEST_S):
        async with _client(broker, "watcher") as watcher:
            await watcher.subscribe(topic, qos=1)
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
            try:
                assert proc.stdout is not None
                async with asyncio.timeout(_STEP_S):
                    assert await proc.stdout.readline() == b"online\n"
                assert (await _next(watcher)).payload == b"online"
            finally:
                proc.kill()
                async with asyncio.timeout(_STEP_S):
                    await proc.communicate()
            assert proc.returncode == -signal.SIGKILL
            will = await _next(watcher)
        # The will was retained: a node that died stays "offline" for later subscribers.
        async with _client(broker, "later") as later:
            await later.subscribe(topic, qos=1)
            retained = await _next(later)
    assert (will.topic.value, will.payload, will.qos) == (topic, b"offline", 1)
    assert (retained.payload, retained.retain) == (b"offline", True)


async def test_persistent_session_gets_messages_sent_while_away(broker: LocalBroker) -> None:
    """A clean_session=False subscriber gets, on return, the QoS 1 messages it missed."""
    sent = [f"s{i}".encode() for i in range(5)]
    async with asyncio.timeout(_TEST_S):
        async with _client(broker, "collector", clean_session=False) as sub:
            await sub.subscribe(f"{PREFIX}/+/sample", qos=1)
        async with _client(broker, "node-a") as pub:
            for payload in sent:
                await pub.publish(sample_topic("node-a"), payload, qos=1)
        async with _client(broker, "collector", clean_session=False) as sub:
            received = await _take(sub, len(sent))
    assert received == sent


async def test_persistent_session_survives_broker_restart(mosquitto: MosquittoBroker) -> None:
    """Messages queued for an absent persistent session survive a Mosquitto restart."""
    sent = [f"s{i}".encode() for i in range(5)]
    async with asyncio.timeout(_TEST_S):
        async with _client(mosquitto, "collector", clean_session=False) as sub:
            await sub.subscribe(f"{PREFIX}/+/sample", qos=1)
        async with _client(mosquitto, "node-a") as pub:
            for payload in sent:
                await pub.publish(sample_topic("node-a"), payload, qos=1)
        await asyncio.to_thread(mosquitto.restart)
        async with _client(mosquitto, "collector", clean_session=False) as sub:
            received = await _take(sub, len(sent))
            # The subscription itself was kept too: new messages still arrive.
            async with _client(mosquitto, "node-a") as pub:
                await pub.publish(sample_topic("node-a"), b"after", qos=1)
            received += await _take(sub, 1)
    assert received == [*sent, b"after"]


async def test_retained_message_survives_broker_restart(mosquitto: MosquittoBroker) -> None:
    """Mosquitto's persistence keeps retained messages (node inventories) across a restart."""
    topic = inventory_topic("node-a")
    async with asyncio.timeout(_TEST_S):
        async with _client(mosquitto, "node-a") as pub:
            await pub.publish(topic, b'{"gpus":8}', qos=1, retain=True)
        await asyncio.to_thread(mosquitto.restart)
        async with _client(mosquitto, "late") as sub:
            await sub.subscribe(topic, qos=1)
            message = await _next(sub)
    assert (message.payload, message.retain) == (b'{"gpus":8}', True)


async def test_deployed_acl_confines_each_agent_to_its_own_topics(
    deployed: _Endpoint,
) -> None:
    """With deploy/'s config, node-a's write to node-b's topic is dropped and node-a is cut off.

    Mosquitto 2.0 acknowledges the denied QoS 1 publish (so the agent cannot tell), then
    closes the connection.
    """
    async with asyncio.timeout(_TEST_S):
        async with _client(deployed, "collector", username="capwatch-collector") as collector:
            await collector.subscribe(f"{PREFIX}/#", qos=1)
            async with _client(deployed, "node-a", username="node-a") as agent:
                await agent.publish(sample_topic("node-a"), b"own", qos=1)
                await agent.publish(sample_topic("node-b"), b"forged", qos=1)
                with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
                    await _next(agent)  # it subscribed to nothing: only a hang-up ends this
            async with _client(deployed, "node-a", username="node-a") as agent:
                await agent.publish(status_topic("node-a"), b"online", qos=1, retain=True)
            received = [await _next(collector) for _ in range(2)]
    assert [(m.topic.value, m.payload) for m in received] == [
        (sample_topic("node-a"), b"own"),
        (status_topic("node-a"), b"online"),
    ]


async def test_deployed_acl_lets_the_admin_user_clear_a_nodes_retained_messages(
    deployed: _Endpoint,
) -> None:
    """capwatch-admin (mqtt.admin_username) clears node-a's retained status, inventory and
    watermark (`inventory forget`); a user the ACL does not let write one (node-a, its
    watermark) gets one line, though Mosquitto acknowledged the refused publish."""
    mqtt = CollectorMqttSettings(host=deployed.host, port=deployed.port)
    topics = node_topics(["node-a"])
    async with asyncio.timeout(_TEST_S):
        async with _client(deployed, "node-a", username="node-a") as agent:
            await agent.publish(status_topic("node-a"), b"online", qos=1, retain=True)
            await agent.publish(inventory_topic("node-a"), b"{}", qos=1, retain=True)
        async with _client(deployed, "capwatch-collector", username="capwatch-collector") as c:
            await c.publish(watermark_topic("node-a"), b"{}", qos=1, retain=True)
        admin = Login("capwatch-admin", "pw-capwatch-admin", "capwatch-admin")
        await clear_retained(mqtt, admin, topics)
        async with _client(deployed, "capwatch-collector", username="capwatch-collector") as c:
            await c.subscribe(f"{PREFIX}/node-a/#", qos=1)
            await c.publish(status_topic("node-b"), b"x", qos=1)  # refused: ends the session
            left = await _retained_until_hung_up(c)
        assert left == []
        # Its own status, then a watermark it may not write: the last topic refused.
        mine = [status_topic("node-a"), watermark_topic("node-a")]
        with pytest.raises(MqttWireError, match=r"^the broker at 127\.0\.0\.1"):
            await clear_retained(mqtt, Login("node-a", "pw-node-a", "node-a"), mine)


async def _retained_until_hung_up(client: aiomqtt.Client) -> list[str]:
    """The topics of the messages ``client`` gets until the broker hangs up on it."""
    topics: list[str] = []
    with contextlib.suppress(aiomqtt.MqttError):
        while True:
            topics.append((await _next(client)).topic.value)
    return topics


async def test_deployed_config_refuses_anonymous_and_wrong_passwords(
    deployed: _Endpoint,
) -> None:
    """allow_anonymous false and the password file are in force."""
    async with asyncio.timeout(_TEST_S):
        with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed"):
            async with _client(deployed, "anonymous"):
                pass
        bad = aiomqtt.Client(
            deployed.host, deployed.port, username="node-a", password="wrong", timeout=_STEP_S
        )
        with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed"):
            async with bad:
                pass


def test_local_broker_prefers_mosquitto_when_installed(tmp_path: Path) -> None:
    """local_broker() returns a Mosquitto broker when the binary exists, amqtt when asked."""
    if find_mosquitto() is None or not amqtt_available():
        pytest.skip("needs both mosquitto and amqtt")
    assert isinstance(local_broker(tmp_path / "a"), MosquittoBroker)
    chosen = local_broker(tmp_path / "b", port=1884, prefer="embedded")
    assert isinstance(chosen, EmbeddedBroker)
    assert (chosen.host, chosen.port, chosen.running) == ("127.0.0.1", 1884, False)


def test_embedded_broker_reports_a_busy_port(tmp_path: Path) -> None:
    """Starting on a port another process holds fails with the reason, not a hang."""
    if not amqtt_available():
        pytest.skip("amqtt is not installed")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = EmbeddedBroker(tmp_path / "busy", port=holder.getsockname()[1])
        with pytest.raises(CapwatchError, match="address already in use"):
            busy.start()
    assert not busy.running


def test_embedded_broker_stops_and_restarts(embedded: EmbeddedBroker) -> None:
    """stop() ends the child and frees the port; restart() listens again on the same port."""
    port = embedded.port
    embedded.stop()
    assert not embedded.running
    with socket.socket() as probe:
        assert probe.connect_ex((embedded.host, port)) != 0
    embedded.restart()
    assert embedded.running
    assert embedded.port == port


def test_foreground_command_stops_its_mosquitto_on_sigterm(tmp_path: Path) -> None:
    """`python -m collector.localbroker` runs until SIGTERM, then leaves no broker behind."""
    if find_mosquitto() is None:
        skip_without_mosquitto()
    port = free_port()
    argv = [sys.executable, "-m", "collector.localbroker", "--port", str(port)]
    argv += ["--data-dir", str(tmp_path / "fg")]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for_port("127.0.0.1", port, timeout_s=_STEP_S)
            proc.send_signal(signal.SIGTERM)
            # Generous: mosquitto writes its persistence file on the way out, which can wait
            # on a busy disk.
            _, stderr = proc.communicate(timeout=_TEST_S)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "local_broker_selected" in stderr
    assert "broker_stopped" in stderr
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
