"""A scripted stand-in for the MQTT subscriber: the broker is the external boundary.

:class:`ScriptedBroker` plays the broker's side for the collector's reader: tests push reads
(lists of messages) into it, drop the connection, and look at which packet ids were
acknowledged, and what the store held at the moment of each acknowledgement.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from collector.ingest.packets import Message
from shared.errors import MqttConnectError, MqttConnectionLost


@dataclass
class AckRecord:
    """One ack() call: the ids, which connection, and what the probe saw at that moment."""

    link: int
    packet_ids: list[int]
    observed: int


@dataclass
class ScriptedBroker:
    """Hands out :class:`ScriptedSubscriber` connections that share one script."""

    session_present: bool = False
    probe: Callable[[], int] = lambda: 0
    """Called at each ack (e.g. rows in the database), recorded in :class:`AckRecord`."""
    acks: list[AckRecord] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)
    """What the collector published retained, by topic (the latest payload)."""
    published: list[tuple[str, bytes, int]] = field(default_factory=list)
    """Every retained publish: topic, payload, and what the probe saw at that moment."""
    subscriptions: list[list[tuple[str, int]]] = field(default_factory=list)
    unsubscriptions: list[list[str]] = field(default_factory=list)
    connections: int = 0
    refuse_with: int | None = None
    """A CONNACK return code to refuse every connection with (4: bad credentials)."""
    _reads: asyncio.Queue[list[Message] | None] = field(default_factory=asyncio.Queue)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def connect(self) -> ScriptedSubscriber:
        """A new connection (the collector's ``connect`` factory)."""
        self.connections += 1
        return ScriptedSubscriber(self, self.connections)

    def message(self, topic: str, payload: bytes) -> Message:
        """A QoS 1 message with the next packet id."""
        return Message(topic, payload, 1, next(self._ids) % 0xFFFF + 1, False, False)

    def deliver(self, messages: Sequence[Message]) -> None:
        """The next read the subscriber returns."""
        self._reads.put_nowait(list(messages))

    def drop_connection(self) -> None:
        """The current connection ends after the reads already delivered."""
        self._reads.put_nowait(None)

    def acked_ids(self) -> list[int]:
        """Every acknowledged packet id, in order."""
        return [i for record in self.acks for i in record.packet_ids]


class ScriptedSubscriber:
    """One connection of :class:`ScriptedBroker`; implements the reader's Subscriber."""

    def __init__(self, broker: ScriptedBroker, link: int) -> None:
        self.broker = broker
        self.link = link
        self.session_present = broker.session_present
        self.closed = False

    async def __aenter__(self) -> Self:
        if self.broker.refuse_with is not None:
            raise MqttConnectError("refused", return_code=self.broker.refuse_with)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.closed = True

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> list[int]:
        """Record the subscription; grant QoS 1."""
        self.broker.subscriptions.append(list(topics))
        self.broker.session_present = True
        return [1 for _ in topics]

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        """Record the unsubscription."""
        self.broker.unsubscriptions.append(list(topics))

    async def next_batch(self) -> list[Message]:
        """The next scripted read; raises MqttConnectionLost at a scripted drop."""
        if self.closed:
            raise MqttConnectionLost("closed")
        read = await self.broker._reads.get()
        if read is None:
            self.closed = True
            raise MqttConnectionLost("scripted drop")
        return read

    def ack(self, packet_ids: Iterable[int]) -> None:
        """Record the acknowledgement (refused once the connection is gone, as for real)."""
        if self.closed:
            raise MqttConnectionLost("closed")
        self.broker.acks.append(AckRecord(self.link, list(packet_ids), self.broker.probe()))

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Record retained publishes (refused once the connection is gone, as for real)."""
        if self.closed:
            raise MqttConnectionLost("closed")
        observed = self.broker.probe()
        for topic, payload in messages:
            self.broker.retained[topic] = payload
            self.broker.published.append((topic, payload, observed))
