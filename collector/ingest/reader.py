"""The reader: broker -> validated units on a bounded queue.

One task. It holds the MQTT connection (reconnecting with capped, randomised backoff), turns
each read from the broker into :class:`Unit` s (an item per message plus the packet ids to
acknowledge) and puts them on the writer's bounded queue. When the queue is full the reader
waits, stops taking messages from the subscriber, which then stops reading the socket: TCP
pushes back on the broker. It never acknowledges anything itself; the writer does, after the
commit that stored the unit.

A read is validated a unit at a time: at most ``unit_messages`` messages (:data:`UNIT_MESSAGES`,
about 2 ms of validation) and :data:`UNIT_BYTES` of payload, each put on the queue as soon as
it is validated, the event loop running its other tasks between two. Validation is most of the
loop's work (~40 us a sample); a read of a thousand messages validated in one go held the loop
for tens of milliseconds, and every step of the writer's commit (each SQLite statement is a
round trip through the loop) waited behind it, and the writer could start on none of it.

On stop it hands the writer a :class:`StopUnit` and keeps the connection open until the
writer has committed and acknowledged everything before it, so everything the reader took
is stored and acknowledged; what the subscriber had not handed over yet is redelivered.

Each node's ingest budget (:mod:`collector.ingest.budgets`) measures arrival times, which
say when a message was sent only while the collector keeps up. So the reader credits the
budgets with each time it was not reading from a session the broker kept: since this
session's last read before the process started (``meta`` key ``ingest_read <session>``,
written at most every :data:`READ_MARK_EVERY_S` with a unit), from a lost connection's last
read (one that died silently is noticed only at its keepalive timeout) to the resumed one,
while it waited for room in the writer's queue, and while the event loop was held without a
disconnect (:class:`~collector.ingest.budgets.StallWatch`: a long garbage collection, a
blocking write to a slow disk, SIGSTOP), each time once. What the broker queued meanwhile,
which arrives all at once, is then not refused as ``rate_limited``.

A connection the broker closes again and again within seconds of opening means another
client holds the same client id (each connect takes the session from the other): the
backoff then keeps growing, and ``mqtt_session_contested`` is logged as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, NamedTuple, Protocol, Self

from prometheus_client import CollectorRegistry

from collector.ingest.budgets import StallWatch
from collector.ingest.metrics import ReaderMetrics
from collector.ingest.packets import Message
from collector.ingest.validate import Ingestor, Item
from shared.errors import MqttConnectError, MqttWireError
from shared.logging import get_logger
from shared.topics import LEGACY_SUBSCRIPTIONS

__all__ = [
    "FILTERS_META_KEY",
    "READ_MARK_EVERY_S",
    "READ_META_KEY",
    "RETIRE_AFTER_S",
    "SESSION_META_KEY",
    "UNIT_BYTES",
    "UNIT_MESSAGES",
    "Acker",
    "Connect",
    "FilterState",
    "MetaItem",
    "Reader",
    "StopUnit",
    "Subscriber",
    "Unit",
    "UnitQueue",
    "load_last_read",
    "load_session",
    "session_meta_keys",
]

log = get_logger("reader")

UNIT_MESSAGES: Final = 64
"""Messages validated in one go (one unit) before the loop runs its other tasks."""
UNIT_BYTES: Final = 1 << 20
"""Payload bytes of one unit at most (a message alone is at most MAX_PAYLOAD_BYTES, less):
with :data:`UNIT_MESSAGES`, what sizes the writer's queue (``queue_max_bytes``)."""

READ_MARK_EVERY_S: Final = 30.0
"""How often at most the time of the last read is written with a unit (``meta``)."""
_UNKNOWN_GAP_S: Final = 3_600.0
"""The gap credited at start when the store has a session but no time of its last read (a
store from before that key): restarts take minutes; an hour covers them."""

_STABLE_S: Final = 10.0
"""A connection that lived this long was healthy: the next reconnect starts fast again."""
_CONTESTED_AFTER: Final = 3
"""Connections in a row that the broker closed sooner than that: call it contested."""


class Subscriber(Protocol):
    """What the reader needs of an MQTT connection (:class:`MqttSubscriber` is one)."""

    session_present: bool

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> list[int]: ...

    async def unsubscribe(self, topics: Sequence[str]) -> None: ...

    async def next_batch(self) -> list[Message]: ...

    def ack(self, packet_ids: Iterable[int]) -> None: ...

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None: ...

    @property
    def closed(self) -> bool: ...


class Acker(Protocol):
    """Where a unit's acknowledgements go: the connection its messages came on (the writer
    publishes the store's watermarks there too)."""

    def ack(self, packet_ids: Iterable[int]) -> None: ...

    def publish_retained(self, messages: Sequence[tuple[str, bytes]]) -> None: ...

    @property
    def closed(self) -> bool: ...


SESSION_META_KEY: Final = "mqtt_session"
FILTERS_META_KEY: Final = "mqtt_filters"
"""``meta`` keys of the broker session a collector last had and of the topic filters that
session holds (:class:`FilterState`): each followed by the session (``host:port/client
id``, :func:`session_meta_keys`), since collectors sharing one store (a share group) each
have their own session. A store from before that has them bare (one collector's)."""


READ_META_KEY: Final = "ingest_read"
"""``meta`` key (followed by the session) of the wall-clock time of the session's last read."""


def session_meta_keys(session_key: str) -> tuple[str, str]:
    """The ``meta`` keys of session ``session_key``'s facts: (the session, its filters)."""
    return f"{SESSION_META_KEY} {session_key}", f"{FILTERS_META_KEY} {session_key}"


async def load_last_read(
    meta: Callable[[str], Awaitable[str | None]], session_key: str
) -> float | None:
    """The wall-clock time session ``session_key`` was last read from (within
    :data:`READ_MARK_EVERY_S`), or ``None`` if the store does not know it."""
    value = await meta(f"{READ_META_KEY} {session_key}")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


async def load_session(
    meta: Callable[[str], Awaitable[str | None]], session_key: str
) -> tuple[bool, FilterState | None]:
    """Whether the store knows session ``session_key`` (the broker should have kept it), and
    the filters it holds: from this session's own keys, else from the bare keys a store of
    one collector kept before (when they name this session)."""
    own, filters = session_meta_keys(session_key)
    if await meta(own) == session_key:
        return True, FilterState.from_json(await meta(filters))
    if await meta(SESSION_META_KEY) == session_key:
        return True, FilterState.from_json(await meta(FILTERS_META_KEY))
    return False, None


RETIRE_AFTER_S: Final = 300.0
"""How long after adding new filters the reader may unsubscribe the ones they replace."""


@dataclass(frozen=True, slots=True)
class FilterState:
    """The topic filters the broker holds for the collector's session, and since when.

    ``since`` is the wall-clock time the last filter was added (``None``: unknown).
    """

    filters: tuple[str, ...]
    since: float | None

    def to_json(self) -> str:
        """The ``meta`` value."""
        return json.dumps({"filters": list(self.filters), "since": self.since})

    @classmethod
    def from_json(cls, value: str | None) -> FilterState | None:
        """Read the ``meta`` value; ``None`` if absent or unreadable (treated as legacy)."""
        if value is None:
            return None
        try:
            raw = json.loads(value)
            filters = tuple(str(f) for f in raw["filters"])
            since = raw["since"]
            return cls(filters, None if since is None else float(since))
        except (ValueError, TypeError, KeyError):
            return None


Connect = Callable[[], Subscriber]
"""Makes a new, not yet connected subscriber for each connection attempt."""


class MetaItem(NamedTuple):
    """A fact for the ``meta`` table, written in the same transaction as the unit."""

    key: str
    value: str


@dataclass(slots=True)
class Unit:
    """What one read from the broker became: an item per message, and the ids to ack.

    ``link`` is the connection the messages came on: acknowledgements go there and nowhere
    else (after a reconnect the broker redelivers, and the store drops the duplicates).
    """

    link: Acker | None
    items: list[Item | MetaItem]
    acks: list[int] = field(default_factory=list)


@dataclass(slots=True)
class StopUnit:
    """The last unit: the writer commits and acks all before it, then resolves ``done``."""

    done: asyncio.Future[None]


class UnitQueue(Protocol):
    """Where the reader puts its units: the writer's bounded queue."""

    def full(self) -> bool: ...

    async def put(self, item: Unit | StopUnit, /) -> None: ...


class Reader:
    """Reads from the broker into ``queue`` until ``stop`` is set; see the module docstring."""

    def __init__(
        self,
        connect: Connect,
        ingestor: Ingestor,
        queue: UnitQueue,
        *,
        topics: Sequence[str],
        session_key: str,
        had_session: bool,
        held: FilterState | None = None,
        stop: asyncio.Event,
        connected: asyncio.Event,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        unit_messages: int = UNIT_MESSAGES,
        metrics: ReaderMetrics | None = None,
        last_read: float | None = None,
    ) -> None:
        self._connect = connect
        self._unit_messages = unit_messages
        self._ingestor = ingestor
        self._queue = queue
        self._topics = list(topics)
        self._session_key = session_key
        self._expect_session = had_session
        self._remembered = False
        self._held = held if had_session else None
        self._stop = stop
        self.connected = connected
        """Set while subscribed (tests and the demo wait on it)."""
        self._min_s = reconnect_min_s
        self._max_s = reconnect_max_s
        self.metrics = ReaderMetrics(CollectorRegistry()) if metrics is None else metrics
        self._last_read = last_read
        """Wall-clock time of this session's last read before the process started."""
        self._lost_at: float | None = None
        """Monotonic time since which the last connection delivered nothing before it ended
        (``None``: none has ended yet)."""
        self._asked_at: float | None = None
        """Monotonic time the reader last asked this connection for a read."""
        budgets, clock = ingestor.budgets, ingestor.clock
        self._stalls = None if budgets is None else StallWatch(budgets, clock.monotonic, "reader")
        """Credits the budgets with the times the event loop was held while connected."""
        self._held_at_ask = 0.0
        self._held_at_loss = 0.0
        """The stalls' credit (:attr:`StallWatch.credited_s`) when the reader last asked for a
        read, and when the last connection was lost: a gap credited from then counts each once."""
        self._read_key = f"{READ_META_KEY} {session_key}"
        self._read_marked = -math.inf

    async def run(self) -> None:
        """Read until stop; then wait until the writer has stored and acked everything."""
        delay = self._min_s
        short_lived = 0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            sub = self._connect()
            opened: float | None = None
            self._asked_at = None
            try:
                async with sub:
                    opened = loop.time()
                    try:
                        await self._connected(sub)
                    finally:
                        self.connected.clear()
                    await self._finish()  # on this connection, so the last acks reach it
                    return
            except MqttWireError as exc:
                if opened is not None:
                    # Since the read it was waiting for: a connection that died silently
                    # (half-open) is noticed only at the keepalive timeout (1.5 x
                    # keepalive_s), and the broker queued for the session meanwhile.
                    asked = self._asked_at
                    self._lost_at = self._ingestor.clock.monotonic() if asked is None else asked
                    self._held_at_loss = self._held_at_ask if asked is not None else self._held_s()
                lived_s = None if opened is None else loop.time() - opened
                if lived_s is not None and lived_s >= _STABLE_S:
                    delay, short_lived = self._min_s, 0  # it had been fine: retry at once
                elif lived_s is not None:
                    short_lived += 1
                # A refused connect (never opened) says nothing about a contested session.
                contested = short_lived if lived_s is not None else 0
                self._disconnected(exc, contested, retry_in_s=delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = max(self._min_s, min(self._max_s, delay * 2) * random.uniform(0.5, 1.0))
        await self._finish()

    def _disconnected(self, exc: MqttWireError, short_lived: int, *, retry_in_s: float) -> None:
        """Count and log a lost or refused connection; say loudly what needs a person."""
        self.metrics.disconnects.inc()
        if isinstance(exc, MqttConnectError) and exc.return_code in (4, 5):
            # Retried (the broker's passwd or ACL may be fixed), but said loudly.
            self.metrics.not_authorized.inc()
            log.error(
                "mqtt_not_authorized",
                error=str(exc),
                hint="check the settings mqtt.username and mqtt.password "
                "(CAPWATCH_MQTT__USERNAME / CAPWATCH_MQTT__PASSWORD) against the "
                "broker's password file and ACL",
            )
        if short_lived >= _CONTESTED_AFTER:
            self.metrics.session_contested.inc()
            log.error(
                "mqtt_session_contested",
                session=self._session_key,
                closes=short_lived,
                hint="the broker keeps closing the connection right after it opens: another "
                "client is probably using the same client id (a second collector?). Give "
                "each collector its own MQTT user",
            )
        log.warning("mqtt_disconnected", error=str(exc), retry_in_s=round(retry_in_s, 2))

    async def _subscribed(self, sub: Subscriber) -> None:
        """After CONNACK: subscribe unless the broker resumed our session; notice a lost one.

        Then the session's facts go to the store in one unit, each once: the filters the
        session holds when they changed (or were never written under this session's own
        keys), and, once per process, the session under its own key; always the time of
        this read (:data:`READ_META_KEY`). A resumed session credits the ingest budgets
        with the time nothing was read from it."""
        if sub.session_present:
            # A resumed session keeps its subscriptions. Subscribing again would make the
            # broker resend every retained inventory and status (two per node) each restart.
            log.info("mqtt_session_resumed", session=self._session_key)
            changed = await self._update_filters(sub)
        else:
            if self._expect_session:
                self.metrics.sessions_lost.inc()
                log.error(
                    "mqtt_session_lost",
                    session=self._session_key,
                    hint="the broker kept no session for this client id: samples queued "
                    "while the collector was away are lost. Another client may have used "
                    "the collector's client id (bind client ids to users in the broker: "
                    "use_username_as_clientid), or the broker lost its persistence file",
                )
            await sub.subscribe([(t, 1) for t in self._topics])
            log.info("mqtt_subscribed", topics=self._topics, session=self._session_key)
            self._held, changed = FilterState(tuple(self._topics), self._now()), True
        if sub.session_present:
            self._credit_gap()
        own, filters = session_meta_keys(self._session_key)
        items: list[Item | MetaItem] = []
        if self._held is not None and (changed or not self._remembered):
            # Once per process the filters go under this session's own keys even unchanged
            # (the first session this store knows of, or one a store from before
            # per-session keys knew by the bare keys).
            items.append(MetaItem(filters, self._held.to_json()))
        if not self._remembered:
            items.append(MetaItem(own, self._session_key))
            self._remembered = True
        items.append(self._read_mark())
        await self._put(Unit(None, items))
        self._expect_session = True
        self.connected.set()

    async def _update_filters(self, sub: Subscriber) -> bool:
        """Bring a resumed session's filters to ``topics``: add first, retire later; return
        whether the filters held (``_held``) changed.

        A session made by an earlier collector holds :data:`LEGACY_SUBSCRIPTIONS`. The new
        filters are added at once (messages matching both arrive twice for a while; the
        store drops the duplicates). The old ones are removed only at a resumed connection
        :data:`RETIRE_AFTER_S` after that: a broker that keeps a queue per subscription (NATS:
        one JetStream consumer each) drops an unsubscribed filter's backlog, and by then
        everything published before the new filter existed has been delivered through the
        old ones (redeliveries included: NATS' AckWait is 30 s).
        """
        held = self._held or FilterState(LEGACY_SUBSCRIPTIONS, None)
        wanted = self._topics
        added = [t for t in wanted if t not in held.filters]
        if added:
            await sub.subscribe([(t, 1) for t in added])
            log.info("mqtt_subscriptions_added", added=added, session=self._session_key)
            self._held = FilterState((*held.filters, *added), self._now())
            return True
        retired = [t for t in held.filters if t not in wanted]
        if not retired:
            return False
        now = self._now()
        if held.since is not None and now < held.since:
            # The wall clock went back (it was ahead when the filters were added): wait from
            # now, or the old filters would stay until the clock caught up (months, maybe).
            self._held = FilterState(held.filters, now)
            return True
        if held.since is not None and now - held.since < RETIRE_AFTER_S:
            return False
        await sub.unsubscribe(retired)
        log.info("mqtt_subscriptions_retired", retired=retired, session=self._session_key)
        self._held = FilterState(tuple(wanted), held.since)
        return True

    def _now(self) -> float:
        return self._ingestor.clock.time()

    def _read_mark(self) -> MetaItem:
        """The fact that this session is being read now (``meta``, see the module docstring)."""
        now = self._read_marked = self._now()
        return MetaItem(self._read_key, f"{now:.3f}")

    def _credit_gap(self) -> None:
        """A resumed session: credit the budgets with the time nothing was read from it."""
        budgets = self._ingestor.budgets
        if budgets is None:
            return
        clock = self._ingestor.clock
        if self._lost_at is not None:
            # The loop held since (a SIGSTOP that outlived the keepalive) was credited then.
            gap_s = clock.monotonic() - self._lost_at - (self._held_s() - self._held_at_loss)
        elif self._last_read is not None:
            gap_s = max(0.0, clock.time() - self._last_read) + READ_MARK_EVERY_S
        else:
            gap_s = _UNKNOWN_GAP_S
        # Nothing older than the retention window is accepted anyway.
        gap_s = min(gap_s, self._ingestor.max_age_s)
        budgets.credit(gap_s, clock.monotonic())
        log.info("ingest_budget_credit", gap_s=round(gap_s, 1), session=self._session_key)

    def _held_s(self) -> float:
        return 0.0 if self._stalls is None else self._stalls.credited_s

    async def _connected(self, sub: Subscriber) -> None:
        """Subscribe, then ingest reads until stop, the loop watched for stalls all along
        (the session's facts may wait for room in the queue too). Raises MqttWireError when
        the connection ends."""
        stalls = self._stalls
        async with contextlib.nullcontext() if stalls is None else stalls.watching():
            await self._subscribed(sub)
            await self._consume_reads(sub, stalls)

    async def _consume_reads(self, sub: Subscriber, stalls: StallWatch | None) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        nxt: asyncio.Future[list[Message]] | None = None
        try:
            while True:
                if nxt is None:
                    self._asked_at = self._ingestor.clock.monotonic()
                    self._held_at_ask = self._held_s()
                    nxt = asyncio.ensure_future(sub.next_batch())
                await asyncio.wait((nxt, stop), return_when=asyncio.FIRST_COMPLETED)
                if nxt.done():
                    batch, nxt = nxt.result(), None  # raises MqttWireError on disconnect
                    if stalls is not None:
                        stalls.seen()  # before the read: it may hold what a stall queued
                    await self._ingest_read(sub, batch)
                if stop.done():
                    return
        finally:
            stop.cancel()
            if nxt is not None:
                nxt.cancel()  # next_batch() takes messages only when it returns: nothing lost

    async def _ingest_read(self, sub: Subscriber, batch: list[Message]) -> None:
        """Validate one read unit by unit, each queued at once (see the module docstring)."""
        if self._now() - self._read_marked >= READ_MARK_EVERY_S:
            await self._put(Unit(None, [self._read_mark()]))
        start, n, most = 0, len(batch), self._unit_messages
        while start < n:
            end, size = start, 0
            while end < n and end - start < most:
                size += len(batch[end].payload)
                if size > UNIT_BYTES and end > start:
                    break
                end += 1
            await self._put(self._ingest(sub, batch[start:end]))
            if end < n:
                await asyncio.sleep(0)  # a put with room does not yield: the writer's turn
            start = end

    async def _put(self, unit: Unit) -> None:
        """Queue ``unit``; a wait for room in the full queue is a time not reading, credited
        to the budgets: what the broker kept meanwhile arrives at once after. (A stall
        meanwhile was credited as one, by the watch every wait runs under.)"""
        if not self._queue.full():
            await self._queue.put(unit)
            return
        self.metrics.waits.inc()
        mono = self._ingestor.clock.monotonic
        t0, held0 = mono(), self._held_s()
        await self._queue.put(unit)
        budgets = self._ingestor.budgets
        if budgets is not None:
            budgets.credit(mono() - t0 - (self._held_s() - held0), mono())

    def _ingest(self, sub: Subscriber, batch: list[Message]) -> Unit:
        handle = self._ingestor.handle
        items: list[Item | MetaItem] = [handle(m.topic, m.payload) for m in batch]
        acks = [m.packet_id for m in batch if m.packet_id is not None]
        return Unit(sub, items, acks)

    async def _finish(self) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(StopUnit(done))
        await done
