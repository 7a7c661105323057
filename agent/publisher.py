"""MQTT side of the agent: a reconnecting publisher that empties the spool.

Samples wait in the on-disk :class:`agent.spool.Spool` as encoded bytes. :class:`Publisher`
keeps one connection (outer reconnect loop, randomised capped backoff, as aiomqtt
documents), sends the retained inventory and ``online`` status on every connect, then
publishes the spool in order with QoS 1. A sample leaves the spool only after the broker's
PUBACK, so a broker that goes away mid-publish costs at most a duplicate (the collector
drops those), never a loss; after a reconnect, what was not acknowledged is sent again.

The store's watermark closes the loop: on every connect the publisher subscribes (QoS 0) to
its node's watermark topic, where the collector keeps, retained, the highest contiguous
``seq`` of this node's epoch it has stored. Once one is heard, acknowledged samples stay in
the spool until a watermark passes them (:meth:`agent.spool.Spool.confirm`), so a broker
that loses its state (killed without persistence, a host that lost power) loses nothing.
A watermark that says samples are missing above it (``top > seq``: the broker lost some,
or the collector's session) makes the publisher send again everything held, once per
watermark value. No watermark ever (an older collector, an ACL without the topic): samples
leave at PUBACK, as before; watermarks that stop coming: held samples go ``hold_s`` after
their PUBACK.

Samples go out at :data:`shared.budget.PACE_SHARE` of the collector's ingest budget for
one node (``budget``, the agent's ``ingest_budget``): the collector refuses a node's
messages over that budget (``rate_limited``), so a backlog replayed after an outage goes at
a pace it accepts (25 samples a second by default, a day of 5 s samples in ~12 minutes)
instead of as fast as the broker acknowledges. A live agent is far below it and never waits.
A node whose samples take more of that pace on average than the sampling interval
(``interval_s``; e.g. over 256 KiB at 1 s with the default 512 KiB/s) can never keep up: its
spool only grows, then drops its oldest. When :data:`OVER_PACE_SAMPLES` samples in a row
took longer than as many intervals, the publisher says so once (``samples_over_pace``, a
warning naming ``ingest_budget.bytes_per_s`` and the value to give it on the agent and the
collector, or ``interval_s``).

A broker that refuses the credentials is logged at error level, naming the settings to fix
(``mqtt_not_authorized``), and retried with the same backoff: the broker's password file
may be fixed while the agent waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from typing import Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from agent.spool import Spool
from shared.budget import PACE_SHARE, Allowance, NodeBudget
from shared.errors import SchemaError
from shared.logging import get_logger
from shared.schema import NodeStatus, Watermark, decode_watermark, encode
from shared.settings import MqttSettings
from shared.topics import inventory_topic, sample_topic, status_topic, watermark_topic

__all__ = ["OVER_PACE_SAMPLES", "Publisher", "next_backoff", "refused_credentials"]

log = get_logger("publisher")

_PUBLISH_TIMEOUT_S: Final = 10.0
_FLUSH_ON_STOP_S: Final = 5.0
OVER_PACE_SAMPLES: Final = 10
"""How many samples in a row the publisher weighs against as many intervals at the pace, to
say that it cannot keep up: one large sample now and then is the burst's."""
_NOT_AUTHORIZED: Final = frozenset({4, 5, 134, 135})
"""CONNACK refusals for credentials or authorisation: 4 bad user name or password, 5 not
authorised (MQTT 3.1.1); 134, 135 the same in MQTT 5 wording (paho 2 reports both so)."""


def next_backoff(attempt: int, min_s: float, max_s: float) -> float:
    """Seconds to wait before reconnect attempt ``attempt + 1`` (0: the first retry).

    The first retry waits ``min_s``; later ones a uniform draw in ``[min_s, min(max_s,
    min_s * 2**attempt)]`` ("full jitter", AWS Architecture Blog, "Exponential Backoff And
    Jitter", 2015), so agents that lost the same broker do not come back in the same second,
    and each is back within ``max_s`` of the broker's return.
    """
    if attempt <= 0:
        return min_s
    cap = min(max_s, min_s * 2.0 ** min(attempt, 32))
    return random.uniform(min_s, max(min_s, cap))


def refused_credentials(exc: aiomqtt.MqttError) -> bool:
    """Whether the broker refused the connection for its user name or password."""
    if not isinstance(exc, MqttConnectError):
        return False
    rc = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
    return rc in _NOT_AUTHORIZED


def _largest_paced(pace: NodeBudget | None, interval_s: float | None) -> float:
    """The largest sample ``pace`` lets out every ``interval_s``: ``inf`` when either is
    unknown, ``-1`` when it lets out less than one message an interval."""
    if pace is None or interval_s is None:
        return math.inf
    if pace.messages_per_s * interval_s < 1:
        return -1.0
    return pace.bytes_per_s * interval_s


class Publisher:
    """Publishes a node's samples, inventory and status; reconnects forever.

    The TLS context is built here, once, from ``mqtt``'s files: a missing or unusable file
    raises :class:`shared.errors.ConfigError` from the constructor, before any task runs,
    and every reconnect reuses the context.
    """

    def __init__(
        self,
        mqtt: MqttSettings,
        node_id: str,
        spool: Spool,
        inventory: Callable[[], bytes],
        clock: Callable[[], float],
        *,
        publish_timeout_s: float = _PUBLISH_TIMEOUT_S,
        budget: NodeBudget | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.mqtt = mqtt
        self._tls_context = mqtt.tls_context()
        self.publish_timeout_s = publish_timeout_s
        self.node_id = node_id
        self.spool = spool
        self._inventory = inventory
        self._clock = clock
        self._topic = sample_topic(node_id)
        self.published = 0
        self.connects = 0
        self.connected = asyncio.Event()
        self.last_ack: float | None = None
        """Monotonic time (``time.monotonic``) of the last sample the broker acknowledged."""
        self.watermark: Watermark | None = None
        """The store's last watermark heard for this node."""
        self.watermarks_heard = 0
        self.watermarks_refused = 0
        """Watermark messages that did not decode, or named another node."""
        self._resent_for: tuple[int, int] | None = None
        self._resend = False
        self._pace = None if budget is None else budget.paced()
        """What samples are published at (``None``: as fast as the broker acknowledges)."""
        self._allowance = Allowance(time.monotonic())
        self._interval_s = interval_s
        """How often a sample is taken (``None``: unknown, no warning)."""
        self._weighed = (0, 0)
        """Samples and their bytes since the last :data:`OVER_PACE_SAMPLES` were weighed
        against the pace (``(-1, 0)``: warned, no more weighing)."""
        self._pace_bytes = _largest_paced(self._pace, interval_s)
        """The largest sample the pace lets out every interval."""
        self.paced_s = 0.0
        """Seconds the drain waited to stay within the pace."""

    def _status(self, status: str) -> bytes:
        ts = self._clock() if status == "online" else None
        return encode(NodeStatus(v=1, node=self.node_id, status=status, ts=ts))  # type: ignore[arg-type]

    def _client(self) -> aiomqtt.Client:
        m = self.mqtt
        return aiomqtt.Client(
            m.host,
            m.port,
            username=m.username,
            password=m.password_value(),
            identifier=f"capwatch-agent-{self.node_id}",
            clean_session=True,
            keepalive=m.keepalive_s,
            tls_context=self._tls_context,
            timeout=_PUBLISH_TIMEOUT_S,
            will=aiomqtt.Will(
                status_topic(self.node_id), self._status("offline"), qos=1, retain=True
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; then flush (bounded) and say ``offline``."""
        attempt = 0
        while not stop.is_set():
            try:
                async with self._client() as client:
                    await self._announce(client)
                    self.connects += 1
                    self.connected.set()
                    log.info(
                        "mqtt_connected",
                        broker=f"{self.mqtt.host}:{self.mqtt.port}",
                        spooled=len(self.spool),
                    )
                    attempt = 0
                    listener = asyncio.create_task(self._listen(client), name="watermark-listener")
                    try:
                        await self._drain(client, stop)
                    finally:
                        listener.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await listener
                    await self._goodbye(client)
                    return
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                delay = next_backoff(attempt, self.mqtt.reconnect_min_s, self.mqtt.reconnect_max_s)
                attempt += 1
                if refused_credentials(exc):
                    log.error(
                        "mqtt_not_authorized",
                        broker=f"{self.mqtt.host}:{self.mqtt.port}",
                        username=self.mqtt.username,
                        error=str(exc),
                        fix="check the settings mqtt.username and mqtt.password "
                        "(CAPWATCH_MQTT__USERNAME, CAPWATCH_MQTT__PASSWORD) against the "
                        "broker's password file",
                        spooled=len(self.spool),
                        retry_in_s=round(delay, 2),
                    )
                else:
                    log.warning(
                        "mqtt_disconnected",
                        error=str(exc),
                        spooled=len(self.spool),
                        retry_in_s=round(delay, 2),
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    async def _announce(self, client: aiomqtt.Client) -> None:
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                await self._announce_now(client)
        except TimeoutError as exc:  # a slow broker: reconnect, never end the agent
            raise aiomqtt.MqttError("inventory/status not acknowledged in time") from exc

    async def _announce_now(self, client: aiomqtt.Client) -> None:
        # The status first: stamped now, where the inventory keeps the agent's start time. A
        # node forgotten while this agent ran (collector inventory forget) comes back by the
        # status; its inventory first was dropped as sent before the forget, for good.
        await client.publish(status_topic(self.node_id), self._status("online"), qos=1, retain=True)
        await client.publish(inventory_topic(self.node_id), self._inventory(), qos=1, retain=True)
        if self.spool.hold_s > 0:
            # Before the first sample goes out: the retained watermark arrives right after.
            await client.subscribe(watermark_topic(self.node_id), qos=0)

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Take the store's watermarks as they come; end quietly with the connection (the
        drain notices it at its next publish)."""
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray):
                    self.on_watermark(bytes(payload))

    def on_watermark(self, payload: bytes) -> None:
        """One watermark message: forget what it passes; resend if it reports a hole."""
        mark: Watermark | None = None
        try:
            mark = decode_watermark(payload)
            error = f"names node {mark.node!r}"
        except SchemaError as exc:
            error = str(exc)
        if mark is not None and mark.node == self.node_id and mark.epoch > self.spool.epoch:
            # Retained from an epoch this spool never reached: it passes nothing of ours. A
            # wiped directory starts at the wall clock in ms, past the old run's epoch: this
            # is one whose clock is now behind the old run's first start. The collector
            # follows our epoch once it stores it.
            error = f"epoch {mark.epoch} is past ours ({self.spool.epoch})"
            mark = None
        if mark is None or mark.node != self.node_id:
            self.watermarks_refused += 1
            if self.watermarks_refused == 1 or self.watermarks_refused % 100 == 0:
                log.warning("watermark_refused", error=error, refused=self.watermarks_refused)
            return
        self.watermark = mark
        self.watermarks_heard += 1
        spool = self.spool
        if not spool.holding:
            spool.holding = True
            log.info("watermark_heard", epoch=mark.epoch, seq=mark.seq, hold_s=spool.hold_s)
        spool.confirm(mark.epoch, mark.seq)
        at = (mark.epoch, mark.seq)
        if mark.top > mark.seq and spool.unconfirmed and self._resent_for != at:
            # The store has samples above a hole: the broker lost some that it acknowledged.
            self._resent_for = at
            self._resend = True
            spool.wake()

    async def _drain(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Publish spooled samples in order until stop; a sample leaves only after PUBACK.

        After stop, what is spooled gets ``_FLUSH_ON_STOP_S`` to go out, so a long backlog
        cannot hold the agent past its service manager's stop timeout; the rest stays in
        the spool for the next start.
        """
        loop = asyncio.get_running_loop()
        flush_deadline: float | None = None
        self.spool.rewind()  # whatever the last connection did not get acknowledged
        while True:
            if self._resend:  # between two publishes: nothing in flight
                self._resend = False
                mark = self.watermark
                n = self.spool.resend()
                log.warning(
                    "spool_resend",
                    samples=n,
                    epoch=None if mark is None else mark.epoch,
                    after_seq=None if mark is None else mark.seq,
                    store_top=None if mark is None else mark.top,
                )
            if stop.is_set():
                if flush_deadline is None:
                    flush_deadline = loop.time() + _FLUSH_ON_STOP_S
                elif loop.time() > flush_deadline:
                    log.info("stop_flush_incomplete", unsent_spooled=len(self.spool))
                    return
            record = self.spool.next()
            if record is None:
                if stop.is_set():
                    return
                waiter = asyncio.ensure_future(self.spool.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
                continue
            await self._keep_pace(len(record.payload))
            try:
                async with asyncio.timeout(self.publish_timeout_s):
                    await client.publish(self._topic, record.payload, qos=1)
            except TimeoutError as exc:
                raise aiomqtt.MqttError("publish not acknowledged in time") from exc
            self.spool.ack(record)
            self.published += 1
            self.last_ack = time.monotonic()

    async def _keep_pace(self, nbytes: int) -> None:
        """Wait until a sample of ``nbytes`` fits the pace, then spend it."""
        pace = self._pace
        if pace is None:
            return
        n, total = self._weighed
        if n >= 0:
            n, total = n + 1, total + nbytes
            if n < OVER_PACE_SAMPLES:
                self._weighed = n, total
            elif total > n * self._pace_bytes:
                self._warn_over_pace(total // n, pace)
            else:
                self._weighed = 0, 0
        wait_s = self._allowance.wait_s(pace, nbytes, time.monotonic())
        if wait_s > 0:
            self.paced_s += wait_s
            await asyncio.sleep(wait_s)
        now = time.monotonic()
        self._allowance.take(pace, nbytes, now, now)

    def _warn_over_pace(self, nbytes: int, pace: NodeBudget) -> None:
        """Say once that samples (``nbytes`` on average) come faster than the pace lets them
        out, and what to raise."""
        self._weighed = -1, 0
        interval_s = self._interval_s or 1.0
        if self._pace_bytes < 0:  # less than one message an interval
            setting, env = "messages_per_s", "CAPWATCH_INGEST_BUDGET__MESSAGES_PER_S"
            need = math.ceil(1 / interval_s / PACE_SHARE)
        else:
            setting, env = "bytes_per_s", "CAPWATCH_INGEST_BUDGET__BYTES_PER_S"
            need = math.ceil(nbytes / interval_s / PACE_SHARE)
        log.warning(
            "samples_over_pace",
            mean_sample_bytes=nbytes,
            interval_s=interval_s,
            pace_bytes_per_s=round(pace.bytes_per_s),
            pace_messages_per_s=pace.messages_per_s,
            spooled=len(self.spool),
            fix=f"{OVER_PACE_SAMPLES} samples in a row took longer to publish at the pace "
            f"({PACE_SHARE:g} of ingest_budget) than as many interval_s: the spool can only "
            "grow, "
            f"then drop its oldest. Raise ingest_budget.{setting} ({env}) to at least "
            f"{need} on this agent and on the collector alike, or raise interval_s",
        )

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        # A clean disconnect does not fire the will, so say offline ourselves.
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
                await client.publish(
                    status_topic(self.node_id), self._status("offline"), qos=1, retain=True
                )
