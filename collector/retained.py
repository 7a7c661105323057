"""Clearing a node's retained messages on the broker (``collector inventory forget``).

The broker keeps three retained messages per node: its status and inventory (its agent's,
``capwatch/v1/nodes/<node>/status|inventory``) and its store watermark (the collector's,
``capwatch/v1/watermarks/<node>``). It hands the first two to every collector that
subscribes, after each reconnect too: left there, a forgotten node would come back at the
collector's next connection. A zero-byte retained PUBLISH removes a topic's retained
message (MQTT 3.1.1 section 3.3.1.3, MQTT 5.0 section 3.3.1.3), the way ``mosquitto_pub -r
-n`` does; the collector counts the empty message it then receives as ``retained_cleared``
and changes nothing.

Who publishes: a user of its own (``mqtt.admin_username``), never the collector's. A broker
that binds client ids to usernames (``use_username_as_clientid``, deploy/mosquitto.conf)
would give a command logging in as the collector's user the collector's own session: it
would disconnect the running collector and, on a clean session, discard the samples the
broker holds for it. Without any username (an open broker: tests, the demo) the command
connects anonymously under a client id of its own.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from shared.errors import MqttWireError
from shared.topics import inventory_topic, status_topic, watermark_topic

if TYPE_CHECKING:
    from collector.settings import CollectorMqttSettings

__all__ = ["CLEAR_TIMEOUT_S", "Login", "clear_commands", "clear_retained", "login", "node_topics"]

CLEAR_TIMEOUT_S: Final = 10.0
"""The longest a command waits for the broker: to connect, and for all its PUBACKs."""


def node_topics(nodes: Iterable[str]) -> list[str]:
    """The retained topics of ``nodes``: status, inventory, watermark of each, in order."""
    return [t for n in nodes for t in (status_topic(n), inventory_topic(n), watermark_topic(n))]


class Login(NamedTuple):
    """How a command logs in to clear retained messages."""

    username: str | None
    password: str | None
    client_id: str


def login(mqtt: CollectorMqttSettings) -> Login | str:
    """The login to clear retained messages with, or why there is none (a sentence)."""
    if mqtt.admin_username is not None:
        return Login(mqtt.admin_username, mqtt.admin_password_value(), mqtt.admin_username)
    if mqtt.username is None:
        return Login(None, None, f"capwatch-forget-{os.getpid()}")
    return (
        f"mqtt.admin_username is not set, and logging in as the collector's user "
        f"({mqtt.username}) would take over its session on a broker that binds client ids to "
        "users: set mqtt.admin_username to a user allowed to write the nodes' retained "
        "topics (deploy/mosquitto.acl: capwatch-admin)"
    )


async def clear_retained(
    mqtt: CollectorMqttSettings,
    who: Login,
    topics: Sequence[str],
    *,
    timeout_s: float = CLEAR_TIMEOUT_S,
) -> None:
    """Publish a zero-byte retained message (QoS 1: each acknowledged) to every topic of
    ``topics`` (at least one); :class:`MqttWireError` (one line) when the broker cannot be
    reached, refuses the login, or closes the connection (an ACL that refuses a topic does:
    Mosquitto 2)."""
    import aiomqtt  # noqa: PLC0415 (only this command talks MQTT this way)

    where = f"{mqtt.host}:{mqtt.port}"
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=who.username,
        password=who.password,
        identifier=who.client_id,
        clean_session=True,
        tls_context=mqtt.tls_context(),
        keepalive=mqtt.keepalive_s,
        timeout=timeout_s,
    )
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                for topic in topics:
                    await client.publish(topic, b"", qos=1, retain=True)
                # Mosquitto 2 acknowledges a publish its ACL refuses, then closes the
                # connection: one more round trip tells a refused last topic from a clear.
                await client.subscribe(topics[-1], qos=0)
    except TimeoutError:
        raise MqttWireError(
            f"the broker at {where} did not answer within {timeout_s:g} s"
        ) from None
    except aiomqtt.MqttError as exc:
        raise MqttWireError(f"the broker at {where}: {exc}") from None
    except OSError as exc:
        raise MqttWireError(f"the broker at {where}: {exc.strerror or exc}") from None
    finally:
        # aiomqtt 2 keeps a hang-up's error in a future nobody awaits once the client has
        # raised: taken here, or asyncio logs "Future exception was never retrieved".
        hung_up = client._disconnected
        if hung_up.done() and not hung_up.cancelled():
            hung_up.exception()


def clear_commands(mqtt: CollectorMqttSettings, topics: Sequence[str]) -> list[str]:
    """The ``mosquitto_pub`` lines that clear ``topics`` by hand (a user allowed to write
    them: ``-u``; its password from ``-P`` or the prompt of ``--pw``-less clients)."""
    user = mqtt.admin_username or "capwatch-admin"
    tls = " --cafile CA.crt" if mqtt.tls_enabled else ""
    head = f"mosquitto_pub -h {shlex.quote(mqtt.host)} -p {mqtt.port}{tls} -u {user} -P PASSWORD"
    return [f"{head} -q 1 -r -n -t {shlex.quote(t)}" for t in topics]
