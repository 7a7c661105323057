"""The shipped broker setup (deploy/mosquitto.conf + ACL + passwd) on a real Mosquitto.

- A node with valid credentials cannot take the collector's persistent session over and
  empty its queue; without ``use_username_as_clientid`` it can (the attack, documented).
- A node may write its own sample, inventory and status topics and nothing else there
  (no retained junk below its node id).
- Passwords and TLS (server verification, client certificates) work with clients built
  from :class:`MqttSettings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from agent.simulate import FleetSimulator
from collector.governance.settings import GovernanceSettings
from collector.settings import (
    AlertSettings,
    BmcSettings,
    CollectorMqttSettings,
    CollectorSettings,
    PduSettings,
    PdusSettings,
    RedfishSettings,
)
from shared.schema import decode_watermark, encode
from shared.settings import MqttSettings, load_settings
from shared.topics import (
    PREFIX,
    WATERMARK_PREFIX,
    inventory_topic,
    sample_topic,
    status_topic,
    watermark_topic,
)
from tests.helpers import count_samples, db_rows, wait_until
from tests.integration.secure_broker import (
    DEPLOY,
    Connection,
    DeployedBroker,
    Pki,
    make_passwd,
    make_pki,
)

pytestmark = pytest.mark.integration

_STEP_S = 5.0
"""Bound of one network wait (connect, publish, next message)."""
_TEST_S = 30.0
"""Bound of a whole wait on the collector."""

_COLLECTOR = "capwatch-collector"
_OPS = "capwatch-ops"
_ADMIN = "capwatch-admin"
_SIM = FleetSimulator(2, gpus_per_node=1, seed=11, interval_s=5)
_NODE, _INTRUDER = _SIM.node_ids
"""Two nodes' users: usernames are node ids, as deploy/README.md sets them up."""
_PASSWORDS = {user: f"pw-{user}-7c1e" for user in (_COLLECTOR, _OPS, _ADMIN, _NODE, _INTRUDER)}
_QUEUED = 100
"""Samples the node publishes while the collector is away."""
_T0 = time.time() - 3600
_PROBE = _QUEUED + 1
"""Sample published during the takeover attempt."""
_SAMPLES = [encode(_SIM.sample(0, _T0 + 5 * seq, seq)) for seq in range(_QUEUED + 3)]
"""_NODE's samples by seq, in the last hour (the collector refuses future ones). Built once:
the simulator's energy counters advance per call."""
_FIX = "use_username_as_clientid true"


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    """A password file with the collector, the ops user and two nodes."""
    return make_passwd(tmp_path / "passwd", _PASSWORDS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, broker certificate (127.0.0.1 / localhost) and a client certificate (CN = node)."""
    return make_pki(tmp_path_factory.mktemp("pki"), client_cn=_NODE)


def _settings(broker: DeployedBroker, user: str | None, **kw: Any) -> MqttSettings:
    """``user``'s settings for the plain listener (``port=`` and TLS settings in ``kw``)."""
    return MqttSettings(
        host=broker.host,
        port=kw.pop("port", broker.port),
        username=user,
        password=None if user is None else SecretStr(_PASSWORDS[user]),
        **kw,
    )


def _client(
    settings: MqttSettings, *, identifier: str | None = None, clean_session: bool | None = None
) -> aiomqtt.Client:
    """An MQTT client built from settings, as the agent builds its own."""
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password_value(),
        tls_context=settings.tls_context(),
        identifier=identifier,
        clean_session=clean_session,
        timeout=_STEP_S,
    )


async def _next(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(_STEP_S):
        return await anext(client.messages)


def _code(rc: int | ReasonCode | None) -> int:
    """An MQTT 3.1.1 return code (paho 2 reports CONNACK 4 and 5 as reason codes 134, 135)."""
    if isinstance(rc, ReasonCode):
        return {134: 4, 135: 5}.get(rc.value, rc.value)
    assert rc is not None
    return rc


# --- the shipped collector settings ------------------------------------------------------


def test_deploy_collector_toml_example_loads_and_shows_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/collector.toml.example loads as CollectorSettings; it names every setting
    (those of [alerts] too), and its values are the defaults except the three it marks."""
    for name in [n for n in os.environ if n.startswith("CAPWATCH_")]:
        monkeypatch.delenv(name)
    example = DEPLOY / "collector.toml.example"
    settings = load_settings(CollectorSettings, config_file=example)
    text = example.read_text()
    tables = {
        "mqtt": "[mqtt]",
        "alerts": "[alerts]",
        "receivers": "[[receivers]]",
        "routes": "[[routes]]",
        "alertmanagers": "[[alertmanagers]]",
        "inhibit_rules": "[[inhibit_rules]]",
        "capacity": "[capacity]",
        "governance": "[governance]",
        "rollups": "[rollups]",
        "billing": "[billing]",
        "store": "[store]",
        "redfish": "[redfish]",
        "pdus": "[pdus]",
        "election": "[election]",
    }
    named = {tables.get(key, f"{key} = ") for key in CollectorSettings.model_fields}
    named |= {f"{key} = " for key in AlertSettings.model_fields}
    named |= {f"{key} = " for key in GovernanceSettings.model_fields}
    named |= {f"{key} = " for key in RedfishSettings.model_fields if key != "bmcs"}
    named |= {"[[redfish.bmcs]]", *(f"{key} = " for key in BmcSettings.model_fields)}
    named |= {f"{key} = " for key in PdusSettings.model_fields if key != "units"}
    named |= {"[[pdus.units]]", *(f"{key} = " for key in PduSettings.model_fields)}
    assert sorted(key for key in named if key not in text) == []
    assert settings.alerts == AlertSettings()
    assert settings.governance == GovernanceSettings()
    changed = {"db_path": settings.db_path, "client_id": settings.client_id}
    assert changed == {
        "db_path": Path("/var/lib/capwatch/capwatch.db"),
        "client_id": "capwatch-collector",
    }
    assert settings.mqtt.username == "capwatch-collector"
    defaults = CollectorSettings(mqtt=CollectorMqttSettings(username="capwatch-collector"))
    assert settings.model_dump(exclude={"db_path", "client_id", "log_json"}) == (
        defaults.model_dump(exclude={"db_path", "client_id", "log_json"})
    )


# --- without the tools ------------------------------------------------------------------


def _pytest_without_mosquitto_passwd(
    tmp_path: Path, *, ci: bool
) -> subprocess.CompletedProcess[str]:
    """A child pytest, with tests/conftest.py's hooks, of one test that needs the broker's
    tools, on a PATH without mosquitto_passwd."""
    repo = DEPLOY.parent
    test = tmp_path / "test_needs_tools.py"
    tmp_path.mkdir(parents=True)
    test.write_text(
        "from tests.integration.secure_broker import need_mosquitto_tools\n\n\n"
        "def test_needs_tools() -> None:\n"
        "    need_mosquitto_tools()\n"
    )
    (tmp_path / "bin").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"PATH": str(tmp_path / "bin"), "PYTHONPATH": str(repo)} | ({"CI": "true"} if ci else {})
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(repo / "pyproject.toml"),
        "-p",
        "tests.conftest",
    ]
    return subprocess.run(
        [*argv, "-p", "no:cacheprovider", str(test)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_mosquitto_passwd_is_a_loud_skip_and_a_failure_under_ci(tmp_path: Path) -> None:
    """Without mosquitto_passwd a broker-security test is skipped and the run's last line
    says so (as for a missing mosquitto); under CI=true it fails instead."""
    local = _pytest_without_mosquitto_passwd(tmp_path / "local", ci=False)
    ci = _pytest_without_mosquitto_passwd(tmp_path / "ci", ci=True)
    assert local.returncode == 0, local.stdout + local.stderr
    assert local.stdout.splitlines()[-1].startswith(
        "!!! 1 integration tests were SKIPPED: Mosquitto is not installed."
    ), local.stdout
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "mosquitto is not installed (mosquitto_passwd is missing)" in ci.stdout


# --- the collector's persistent session ---------------------------------------------------


def _collector_connects(broker: DeployedBroker) -> list[Connection]:
    return [c for c in broker.connections() if c.username == _COLLECTOR]


@asynccontextmanager
async def _collector(broker: DeployedBroker, db: Path, log: Path) -> AsyncIterator[None]:
    """``collector run`` as deployed (deploy/collector.toml.example, the password in the
    environment), connected when the block starts; stopped with SIGTERM after it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPWATCH_")}
    env["CAPWATCH_MQTT__PASSWORD"] = _PASSWORDS[_COLLECTOR]
    script = Path(sys.executable).with_name("collector")  # the installed public CLI
    argv = [
        *([str(script)] if script.exists() else [sys.executable, "-m", "collector"]),
        "run",
        "--config",
        str(DEPLOY / "collector.toml.example"),
        "--db",
        str(db),
        "--host",
        broker.host,
        "--port",
        str(broker.port),
    ]
    before = len(_collector_connects(broker))
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        await wait_until(
            lambda: len(_collector_connects(broker)) > before or proc.returncode is not None,
            timeout_s=_TEST_S,
            what="the collector to connect",
        )
        assert proc.returncode is None, f"collector exited: {_read(log)}"
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(_TEST_S):
                returncode = await proc.wait()
        except TimeoutError:
            proc.kill()
            raise
    assert returncode == 0, _read(log)


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


async def _publish(broker: DeployedBroker, seqs: range) -> None:
    async with _client(_settings(broker, _NODE)) as node:
        for seq in seqs:
            await node.publish(sample_topic(_NODE), _SAMPLES[seq], qos=1)


async def _takeover_attempt(broker: DeployedBroker) -> int:
    """What a node can try with its own valid credentials: the collector's client id with a
    persistent session, and a subscription to every node's topics. Returns how many
    messages reach it while another node publishes sample ``_PROBE``."""
    intruder = _client(_settings(broker, _INTRUDER), identifier=_COLLECTOR, clean_session=False)
    async with _client(_settings(broker, _OPS)) as ops, intruder:
        # Mosquitto 2.0 grants any subscription and filters each message by the ACL.
        await intruder.subscribe(f"{PREFIX}/#", qos=1)
        await ops.subscribe(f"{PREFIX}/+/sample", qos=1)
        await _publish(broker, range(_PROBE, _PROBE + 1))
        assert (await _next(ops)).payload == _SAMPLES[_PROBE]
        # The broker routed the probe to every subscriber before ops got it; a round trip
        # on the intruder's connection brings in anything that was sent to it meanwhile.
        await intruder.unsubscribe(f"{PREFIX}/no-such-topic")
        return len(intruder.messages)


async def _queued_samples_surviving_takeover_attempt(
    broker: DeployedBroker, tmp_path: Path
) -> tuple[int, int]:
    """The collector subscribes and stops; a node publishes ``_QUEUED`` samples; another
    node tries the takeover; the collector comes back. Returns how many of the queued
    samples it stores, and how many messages the intruder got."""
    db, log = tmp_path / "capwatch.db", tmp_path / "collector.log"
    async with _collector(broker, db, log), _client(_settings(broker, _NODE)) as node:
        # Connected is not yet subscribed: offer sample 0 until it is stored. Then the
        # persistent session and its subscriptions exist.
        async with asyncio.timeout(_TEST_S):
            while count_samples(db) == 0:
                await node.publish(sample_topic(_NODE), _SAMPLES[0], qos=1)
                await asyncio.sleep(0.05)
    await _publish(broker, range(1, _QUEUED + 1))
    intruder_got = await _takeover_attempt(broker)
    async with _collector(broker, db, log):
        # Published after the collector is back: the broker delivers what it kept queued
        # before this one, so once it is stored, everything that survived is stored too.
        last = _PROBE + 1
        await _publish(broker, range(last, last + 1))
        await wait_until(
            lambda: db_rows(db, "SELECT count(*) FROM samples WHERE seq = ?", (last,)) == [(1,)],
            timeout_s=_TEST_S,
            what="the sample published after the collector's return",
        )
    queued = db_rows(
        db, "SELECT count(DISTINCT seq) FROM samples WHERE seq BETWEEN 1 AND ?", (_QUEUED,)
    )
    return int(queued[0][0]), intruder_got


async def test_a_node_cannot_take_over_the_collectors_session(tmp_path: Path, passwd: Path) -> None:
    """deploy/'s config gives a node that asks for the collector's client id its own id:
    the collector comes back to all 100 samples queued while it was away."""
    with DeployedBroker(tmp_path / "broker", passwd) as broker:
        stored, intruder_got = await _queued_samples_surviving_takeover_attempt(broker, tmp_path)
        intruder = [c for c in broker.connections() if c.username == _INTRUDER]
    assert stored == _QUEUED
    assert intruder_got == 0  # nor may it read any node's topics
    assert intruder == [Connection(_INTRUDER, clean_session=False, username=_INTRUDER)]


async def test_without_username_as_clientid_a_node_empties_the_collectors_queue(
    tmp_path: Path, passwd: Path
) -> None:
    """The attack the fix stops: deploy/'s config minus use_username_as_clientid loses every
    queued sample to a node that connects as ``capwatch-collector``."""
    with DeployedBroker(tmp_path / "broker", passwd, without=[_FIX]) as broker:
        stored, intruder_got = await _queued_samples_surviving_takeover_attempt(broker, tmp_path)
        intruder = [c for c in broker.connections() if c.username == _INTRUDER]
    assert intruder == [Connection(_COLLECTOR, clean_session=False, username=_INTRUDER)]
    assert stored == 0
    assert intruder_got == 0  # it holds the session, reads nothing: the broker drops it all


# --- what a node may write ---------------------------------------------------------------


async def _round_trip(client: aiomqtt.Client) -> None:
    """Anything the broker sent ``client`` before this returns has arrived."""
    await client.unsubscribe(f"{PREFIX}/no-such-topic")


async def test_a_node_writes_only_its_sample_inventory_and_status_topics(
    tmp_path: Path, passwd: Path
) -> None:
    """deploy/'s ACL drops a node's retained publish to capwatch/v1/nodes/<node>/junk (the
    collector never sees it, nor does a later subscriber), and delivers the agent's three
    topics."""
    own = [sample_topic(_NODE), inventory_topic(_NODE), status_topic(_NODE)]
    junk = f"{PREFIX}/{_NODE}/junk"
    with DeployedBroker(tmp_path / "broker", passwd) as broker:
        async with asyncio.timeout(_TEST_S):
            async with _client(_settings(broker, _COLLECTOR)) as collector:
                await collector.subscribe(f"{PREFIX}/#", qos=1)
                # Mosquitto 2.0 may hang up on a denied publish: a connection of its own.
                with contextlib.suppress(aiomqtt.MqttError):
                    async with _client(_settings(broker, _NODE)) as node:
                        await node.publish(junk, b"x" * 1000, qos=1, retain=True)
                async with _client(_settings(broker, _NODE)) as node:
                    for topic in own:
                        await node.publish(topic, topic.encode(), qos=1, retain=True)
                # The junk went first: had it been routed, it would arrive first.
                live = [(await _next(collector)).topic.value for _ in own]
                await _round_trip(collector)
                live_extra = len(collector.messages)
            async with _client(_settings(broker, _OPS)) as late:
                await late.subscribe(f"{PREFIX}/#", qos=1)
                retained = sorted([(await _next(late)).topic.value for _ in own])
                await _round_trip(late)
                retained_extra = len(late.messages)
    assert live == own
    assert live_extra == 0
    assert retained == sorted(own)
    assert retained_extra == 0


@pytest.mark.parametrize("user", [_OPS, _ADMIN, _COLLECTOR])
async def test_a_service_user_cannot_publish_as_a_node_of_its_own_name(
    tmp_path: Path, passwd: Path, user: str
) -> None:
    """The agents' ``pattern write capwatch/v1/nodes/%u/...`` lines apply to every user:
    the read-only ops user (the dashboards' login), the admin and the collector's own user
    could each publish samples, an inventory and a status as a node named like them
    (``capwatch-ops`` is a valid node id), which the collector stored: a fleet member with
    up to 64 GPUs of 5 kW that no machine is, from a dashboard's password. deploy/'s ACL
    denies them their own name's node topics; the collector sees none of it."""
    own = [sample_topic(user), inventory_topic(user), status_topic(user)]
    with DeployedBroker(tmp_path / "broker", passwd) as broker:
        async with asyncio.timeout(_TEST_S):
            # Another user watches: one login per user name (use_username_as_clientid).
            reader = _COLLECTOR if user == _OPS else _OPS
            async with _client(_settings(broker, reader)) as watcher:
                await watcher.subscribe(f"{PREFIX}/#", qos=1)
                await _round_trip(watcher)
                for topic in own:
                    # Mosquitto 2.0 may hang up on a denied publish: a connection each.
                    with contextlib.suppress(aiomqtt.MqttError):
                        async with _client(_settings(broker, user)) as fake:
                            await fake.publish(topic, b"{}", qos=1, retain=True)
                async with _client(_settings(broker, _NODE)) as node:  # the ACL still delivers
                    await node.publish(status_topic(_NODE), b"{}", qos=1)
                got = (await _next(watcher)).topic.value
                await _round_trip(watcher)
                extra = len(watcher.messages)
    assert (got, extra) == (status_topic(_NODE), 0)


async def test_only_the_collector_writes_a_nodes_watermark_and_only_that_node_reads_it(
    tmp_path: Path, passwd: Path
) -> None:
    """deploy/'s ACL: the collector as deployed publishes a node's store watermark after
    storing its samples, and that node reads it; the node cannot forge its own (its
    retained publish is dropped), another node and the ops user read none."""
    topic = watermark_topic(_NODE)
    samples = [
        encode(msgspec.structs.replace(_SIM.sample(0, _T0 + 5 * seq, seq), epoch=1))
        for seq in range(3)
    ]
    db, log = tmp_path / "capwatch.db", tmp_path / "collector.log"
    with DeployedBroker(tmp_path / "broker", passwd) as broker:
        async with asyncio.timeout(_TEST_S):
            with contextlib.suppress(aiomqtt.MqttError):  # Mosquitto may hang up on it
                async with _client(_settings(broker, _NODE)) as forger:
                    await forger.publish(topic, b"forged", qos=1, retain=True)
            async with _collector(broker, db, log), _client(_settings(broker, _NODE)) as node:
                await node.subscribe(topic, qos=0)
                while count_samples(db) < len(samples):  # connected is not yet subscribed
                    for payload in samples:
                        await node.publish(sample_topic(_NODE), payload, qos=1)
                    await asyncio.sleep(0.2)
                mark = decode_watermark((await _next(node)).payload)
            async with (
                _client(_settings(broker, _INTRUDER)) as intruder,
                _client(_settings(broker, _OPS)) as ops,
            ):
                for reader in (intruder, ops):
                    await reader.subscribe(f"{WATERMARK_PREFIX}/#", qos=0)
                    await _round_trip(reader)
                stolen = len(intruder.messages) + len(ops.messages)
    assert (mark.node, mark.epoch, mark.seq, mark.top) == (_NODE, 1, 2, 2)
    assert stolen == 0


async def test_an_acl_without_the_watermark_line_costs_three_reconnects_not_ingest(
    tmp_path: Path, passwd: Path
) -> None:
    """The ACL before watermarks: Mosquitto closes the collector's connection at its first
    watermark publish. After three such connections the collector stops publishing them
    (watermarks_refused) and goes on storing samples on a connection that stays up (the
    first, three lost, the one after)."""
    old_acl = tmp_path / "old.acl"
    lines = (DEPLOY / "mosquitto.acl").read_text().splitlines()
    old_acl.write_text("\n".join(x for x in lines if "watermarks" not in x) + "\n")
    db, log = tmp_path / "capwatch.db", tmp_path / "collector.log"
    seq = 0
    with DeployedBroker(tmp_path / "broker", passwd, acl=old_acl) as broker:
        async with _collector(broker, db, log), _client(_settings(broker, _NODE)) as node:

            async def publish_until(done: Callable[[], bool]) -> None:
                nonlocal seq
                async with asyncio.timeout(60):
                    while not done():
                        sample = msgspec.structs.replace(_SIM.sample(0, _T0 + seq, seq), epoch=1)
                        await node.publish(sample_topic(_NODE), encode(sample), qos=1)
                        seq += 1
                        await asyncio.sleep(0.1)

            await publish_until(lambda: "watermarks_refused" in _read(log))
            stored = count_samples(db)
            await publish_until(lambda: count_samples(db) >= stored + 10)  # connected again
            connects = len(_collector_connects(broker))
            stored = count_samples(db)
            await publish_until(lambda: count_samples(db) >= stored + 30)
            assert len(_collector_connects(broker)) == connects  # no more reconnects
    assert 3 <= connects <= 5
    assert count_samples(db) <= seq


# --- passwords --------------------------------------------------------------------------


async def test_right_password_connects_and_delivers(tmp_path: Path, passwd: Path) -> None:
    """A node's settings with its password publish; the ops user receives the sample."""
    with DeployedBroker(tmp_path / "broker", passwd) as broker:
        async with asyncio.timeout(_TEST_S):
            async with _client(_settings(broker, _OPS)) as ops:
                await ops.subscribe(f"{PREFIX}/+/sample", qos=1)
                await _publish(broker, range(1))
                message = await _next(ops)
    assert (message.topic.value, message.payload) == (sample_topic(_NODE), _SAMPLES[0])


@pytest.mark.parametrize(
    ("user", "password"),
    [(_NODE, "wrong"), (_NODE, None), ("nobody", "anything"), (None, None)],
    ids=["wrong-password", "no-password", "unknown-user", "anonymous"],
)
async def test_wrong_credentials_are_refused(
    tmp_path: Path, passwd: Path, user: str | None, password: str | None
) -> None:
    """Mosquitto answers CONNACK 5 (not authorised) or 4 (bad username or password)."""
    with DeployedBroker(tmp_path / "broker", passwd) as broker:
        settings = MqttSettings(
            host=broker.host,
            port=broker.port,
            username=user,
            password=None if password is None else SecretStr(password),
        )
        async with asyncio.timeout(_TEST_S):
            with pytest.raises(aiomqtt.MqttCodeError) as info:
                async with _client(settings):
                    pass
    assert _code(info.value.rc) in (4, 5)


# --- TLS --------------------------------------------------------------------------------


def _connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, keepalive 30 s); short fields only."""

    def field(text: str) -> bytes:
        raw = text.encode()
        return len(raw).to_bytes(2, "big") + raw

    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = field("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big") + field(client_id)
    body += (field(username) if username else b"") + (field(password) if password else b"")
    assert len(body) < 128, "one-byte remaining length"
    return bytes([0x10, len(body)]) + body


async def _tls_connack(settings: MqttSettings) -> bytes:
    """Open TLS with ``settings.tls_context()``, send CONNECT; the broker's first 4 bytes.

    asyncio's TLS, not paho: paho leaves the socket of a failed handshake unclosed, and the
    ResourceWarning would fail whichever later test collects it.
    """
    async with asyncio.timeout(_STEP_S):
        reader, writer = await asyncio.open_connection(
            settings.host, settings.port, ssl=settings.tls_context()
        )
        try:
            writer.write(_connect_packet("probe", settings.username, settings.password_value()))
            await writer.drain()
            return await reader.read(4)
        finally:
            writer.close()
            await writer.wait_closed()


async def test_tls_with_the_ca_file_verifies_the_broker_and_delivers(
    tmp_path: Path, passwd: Path, pki: Pki
) -> None:
    """deploy/'s TLS listener: a node with tls_ca_file and its password gets through."""
    with DeployedBroker(tmp_path / "broker", passwd, tls=pki) as broker:
        node = _settings(broker, _NODE, port=broker.tls_port, tls_ca_file=pki.ca_cert)
        async with asyncio.timeout(_TEST_S):
            async with _client(_settings(broker, _OPS)) as ops:
                await ops.subscribe(f"{PREFIX}/+/sample", qos=1)
                async with _client(node) as client:
                    await client.publish(sample_topic(_NODE), _SAMPLES[1], qos=1)
                message = await _next(ops)
    assert message.payload == _SAMPLES[1]


async def test_tls_without_our_ca_refuses_the_broker_before_sending_the_password(
    tmp_path: Path, passwd: Path, pki: Pki
) -> None:
    """``tls = true`` alone trusts the system store, which does not know the capwatch CA:
    the handshake fails, so no CONNECT (and no password) is ever sent."""
    with DeployedBroker(tmp_path / "broker", passwd, tls=pki) as broker:
        system_store = _settings(broker, _NODE, port=broker.tls_port, tls=True)
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            await _tls_connack(system_store)
        # The same connection with our CA is accepted: CONNACK, return code 0.
        ours = _settings(broker, _NODE, port=broker.tls_port, tls_ca_file=pki.ca_cert)
        assert await _tls_connack(ours) == b"\x20\x02\x00\x00"


async def test_mutual_tls_client_certificate_is_the_username(
    tmp_path: Path, passwd: Path, pki: Pki
) -> None:
    """require_certificate + use_identity_as_username: the certificate (CN = node id) alone
    logs the node in, as that node (also its client id); without one, no connection."""
    with DeployedBroker(tmp_path / "broker", passwd, tls=pki, mutual_tls=True) as broker:
        assert broker.tls_port is not None
        with_cert = MqttSettings(
            host=broker.host,
            port=broker.tls_port,
            tls_ca_file=pki.ca_cert,
            tls_cert_file=pki.client_cert,
            tls_key_file=pki.client_key,
        )
        async with asyncio.timeout(_TEST_S):
            async with _client(_settings(broker, _OPS)) as ops:
                await ops.subscribe(f"{PREFIX}/+/sample", qos=1)
                async with _client(with_cert, identifier=_COLLECTOR) as node:
                    await node.publish(sample_topic(_NODE), _SAMPLES[1], qos=1)
                message = await _next(ops)
        # A valid password does not replace the certificate: the broker ends the handshake.
        password_only = _settings(broker, _NODE, port=broker.tls_port, tls_ca_file=pki.ca_cert)
        try:
            answer = await _tls_connack(password_only)
        except (ssl.SSLError, ConnectionResetError):
            answer = b""
        connections = broker.connections()
    assert message.payload == _SAMPLES[1]
    assert answer == b""
    assert Connection(_NODE, clean_session=True, username=_NODE) in connections
    assert all(c.client_id != _COLLECTOR for c in connections)


def test_tls_context_verifies_the_broker_and_carries_the_client_certificate(pki: Pki) -> None:
    """The context from settings checks the broker's chain and name, TLS 1.2 or newer."""
    ctx = MqttSettings(
        tls_ca_file=pki.ca_cert, tls_cert_file=pki.client_cert, tls_key_file=pki.client_key
    ).tls_context()
    assert ctx is not None
    assert (ctx.check_hostname, ctx.verify_mode) == (True, ssl.CERT_REQUIRED)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "capwatch test CA"),),)]
