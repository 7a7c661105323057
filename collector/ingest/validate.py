"""Turn MQTT messages into store items: validate, count, never raise.

:meth:`Ingestor.handle` is the hot path (one call per message). It returns exactly one item
per message: a :class:`SampleRow`, a :class:`NodeUpdate`, or a :class:`Rejected` that the
writer keeps in the bounded quarantine table (the first :data:`QUARANTINE_PER_KEY` of a node
and reason between two flushes of the counters; the rest are counted only). A rejected
message is counted by reason (:class:`~collector.ingest.metrics.IngestMetrics`; per node too,
when the topic names one), logged at most once per reason every ``log_every_s`` seconds, and
acknowledged like any other: it never reaches the samples table and never raises.

It also feeds the live view (:mod:`collector.live`), here, as each message is validated:
before the writer commits it. What the rules may therefore see (they read snapshots of the
view): messages validated but not yet stored, at most the writer's queue (``queue_max``
messages; milliseconds when the writer keeps up, seconds during a backlog); and, once in a
very long while, a valid message that SQLite then refuses (the writer quarantines it as
``store_refused``): its node shows that sample until its next one. Nothing is in the view
that the collector did not receive and validate, and a crash loses the view with the
unacknowledged messages, which the broker redelivers. Feeding the view after the commit
instead was measured (issue 14): each decoded sample then waits in the queue with its row,
which in a drain of a backlog tripled the garbage collector's passes (1.06 s vs 0.29 s per
100,000 samples), cost ~12 us of CPU per sample (64-69 vs 51-55 us) and ~100 MB of RSS, and
took a quarter off the drain rate; for a difference that only a store-refused message shows.

An empty message on a node's ``status`` or ``inventory`` topic is not a bad message: it is
how MQTT clears a retained message (MQTT 3.1.1 and 5.0, section 3.3.1.3: the broker passes
the zero-byte PUBLISH on to subscribers), e.g. ``mosquitto_pub -r -n`` when a node is
decommissioned. It is counted (``retained_cleared``) and acknowledged; what the store and
the live view hold of the node stays as it was.

Each node has an ingest budget (``budget``, :mod:`shared.budget`; the collector's
``ingest_budget``): a message of a node over it is ``rate_limited`` before it is decoded,
so a node flooding the collector with large valid samples costs a few microseconds a
message, not the ~12 ms the largest take to validate, and the other nodes' samples do not
wait behind its flood (:mod:`collector.ingest.budgets`). Its agent replays a backlog under
the same budget, so a legitimate node is never refused.

The fleet is bounded (``max_nodes``, the live view's bound): a message of a node the view does
not hold, when it holds that many (a reject-only node evicted first), is ``fleet_full``, so
invented node names reach neither the store nor the view.

Time checks use the collector's clock, not the node's: a sample stamped more than
``max_skew_s`` ahead of it is ``clock_skew``; one older than the retention window is
``too_old`` (late samples replayed after an outage are welcome until then).

A node decommissioned (``collector inventory forget``; the live view remembers it,
:meth:`~collector.live.LiveView.forgotten_at`) comes back only with a message stamped after
its forget: one stamped before, or within ``max_skew_s`` after (the node's clock may run
that far ahead of the collector's; an ``offline`` status has no time), is ``forgotten``.
That is the backlog the broker queued for the collector's persistent session while it was
down, or samples in flight: stored, they would bring the node back, stale. A rejected
message of a forgotten node, for whatever reason, is counted by its reason only: neither
kept in quarantine nor counted as the node's (its ``node_rejects`` row, the live view's
reject-only node would bring it back too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Final, NamedTuple

from prometheus_client import CollectorRegistry

from collector.ingest.budgets import NodeBudgets, StallWatch
from collector.ingest.metrics import OTHER_REASON, IngestMetrics
from collector.live import DEFAULT_MAX_NODES, LiveView
from collector.nodefacts import GpuFacts, gpu_facts
from collector.store.codec import pack_sample
from collector.store.db import NodeUpdate, QuarantineRow, SampleRow
from collector.store.rollups import pack_readings
from shared.budget import NodeBudget
from shared.clock import Clock
from shared.errors import SchemaError
from shared.logging import get_logger
from shared.schema import (
    MAX_PAYLOAD_BYTES,
    Inventory,
    NodeStatus,
    Sample,
    decode_inventory,
    decode_sample,
    decode_status,
    encode,
)
from shared.topics import parse_topic

__all__ = ["Ingestor", "Item", "Rejected", "sample_row"]

log = get_logger("ingest")

_QUARANTINE_HEAD_BYTES: Final = 256
_TOPIC_CHARS: Final = 256
_DETAIL_CHARS: Final = 300
_MAX_NODE_KEYS: Final = 10_000
"""Distinct (node, reason) pairs kept between two flushes; the rest count under ``*``."""
_MAX_HELD_INVENTORIES: Final = 1_024
"""Inventories of forgotten nodes held for their return (:meth:`Ingestor._hold`); past that
the oldest held goes."""
QUARANTINE_PER_KEY: Final = 10
"""Rejected messages of one node for one reason kept in quarantine between two flushes of the
counters (:meth:`Ingestor.take_node_rejects`, every 2 s): the rest are counted (the reason's
counter, the node's rejects, the store's ``quarantined_total``) and acknowledged, not kept.
A node sending junk as fast as it can then adds 5 rows a second to the bounded quarantine
table rather than pushing every other node's evidence out of it within seconds, and the
writer does not insert a row per junk message. Messages of no node (a topic that names no
valid node) are limited per reason the same way."""


class Rejected(NamedTuple):
    """A message that will not be stored as a sample: why, and what to keep of it."""

    quarantine: QuarantineRow
    kept: bool = True
    """Whether the row goes into the quarantine table (:data:`QUARANTINE_PER_KEY`); counted
    either way."""


Item = SampleRow | NodeUpdate | Rejected
"""What :meth:`Ingestor.handle` makes of one message."""


class _Problem(NamedTuple):
    """Why a message is rejected: the counter's reason and a line for the log and quarantine."""

    reason: str
    detail: str


_DECODERS: Final[dict[str, Callable[[bytes], Sample | NodeStatus | Inventory]]] = {
    "sample": decode_sample,
    "status": decode_status,
    "inventory": decode_inventory,
}


_RETAINED: Final = ("status", "inventory")
"""The message kinds a node publishes retained (:mod:`shared.topics`)."""


def sample_row(
    sample: Sample,
    payload: bytes,
    received: float,
    *,
    rollups: bool = True,
    facts: GpuFacts | None = None,
) -> SampleRow:
    """Summary columns of a validated sample; with ``rollups``, its GPUs packed as the
    rollups' staging reads them (:func:`~collector.store.rollups.pack_readings`), else none
    (nothing would read them). ``facts``: the sample's
    :func:`~collector.nodefacts.gpu_facts`, where the caller has them already (the
    validator hands the same to the live view: one pass over the GPUs for both)."""
    if facts is None:
        facts = gpu_facts(sample.gpus)
    n = facts.util_n
    # The schema bounds each GPU's memory so that the memory sum fits int64
    # (shared/schema.md); were it ever not to, SQLite refuses the row and the writer
    # quarantines it.
    return _new_tuple(
        SampleRow,
        (
            sample.node,
            round(sample.ts * 1000),
            sample.seq,
            round(received * 1000),
            sample.interval_s,
            sample.cpu.pct,
            sample.mem.used_bytes,
            sample.mem.total_bytes,
            len(sample.gpus),
            facts.util_sum / n if n else None,
            facts.mem_used_bytes,
            facts.power_w,
            sample.cpu_power_w,
            payload,
            sample.epoch,
            sample.node_power_w,
            sample.node_power_source,
            pack_readings(facts.readings) if rollups else b"",
        ),
    )


_new_tuple = tuple.__new__  # SampleRow(...) goes through a Python-level __new__; this does not.


class Ingestor:
    """Validates messages and counts them in ``metrics``; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_skew_s: float = 300.0,
        max_age_s: float = 86_400.0,
        log_every_s: float = 10.0,
        live: LiveView | None = None,
        metrics: IngestMetrics | None = None,
        rollups: bool = True,
        budget: NodeBudget | None = None,
    ) -> None:
        self.clock = clock
        self.metrics = IngestMetrics(CollectorRegistry()) if metrics is None else metrics
        m = self.metrics
        self._received, self._samples = m.received, m.samples
        self._status, self._inventory = m.status, m.inventory
        self._cleared = m.retained_cleared
        self._rejected_by = m.rejected_by
        self.live = live
        """The in-memory view of the fleet the rules read; fed here (see the module docstring)."""
        self._rollups = rollups
        """Whether the store rolls samples up (``rollups.enabled``): rows carry packed GPUs."""
        self.max_skew_s = max_skew_s
        self.max_age_s = max_age_s
        self._node_rejects: dict[tuple[str, str], list[int]] = {}
        self._unnamed: dict[str, int] = {}
        """Rejects of messages that name no node, per reason, since the last flush."""
        self._sample_topics: dict[str, tuple[str, str]] = {}
        """Each node's sample topic, parsed: a lookup a sample instead of a parse (~6,500
        instructions, most of them the node name's regular expression); at most the fleet's
        bound (the live view's ``max_nodes``), then cleared."""
        self._fleet = DEFAULT_MAX_NODES if live is None else live.max_nodes
        """The fleet's bound: the live view's ``max_nodes``."""
        self._held: dict[str, Inventory] = {}
        """The last inventory of each forgotten node refused as ``forgotten`` (:meth:`_hold`)."""
        self._log_every_s = log_every_s
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self.budgets = None if budget is None else NodeBudgets(budget, keep=self._fleet)
        """Each node's ingest budget (``None``: none); the reader credits it after a gap."""
        self._observed = None if budget is None else NodeBudgets(budget, keep=self._fleet)
        """The same for :meth:`observe`'s feed (samples another collector stores)."""
        self.feed_stalls = (
            None if self._observed is None else StallWatch(self._observed, clock.monotonic, "feed")
        )
        """Credits the feed's budgets with the times the loop was held (the feed watches)."""
        self._over_budget = (
            ""
            if budget is None
            else f"over the node's ingest budget ({budget.messages_per_s:g} messages and "
            f"{budget.bytes_per_s:,.0f} bytes a second, {budget.burst_s:g} s of burst: "
            "ingest_budget)"
        )

    def _parse(self, topic: str) -> tuple[str, str] | None:
        """:func:`~shared.topics.parse_topic`, remembering a node's sample topic (see
        :attr:`_sample_topics`)."""
        parsed = parse_topic(topic)
        if parsed is not None and parsed[1] == "sample":
            topics = self._sample_topics
            if len(topics) >= self._fleet:
                topics.clear()  # invented names: parsed again, never more than the fleet's
            topics[topic] = parsed
        return parsed

    def take_node_rejects(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Rejects per ``(node, reason)`` since the last call: ``(count, last received ms)``;
        none of a node forgotten since they were counted (written, they would bring it back)."""
        live = self.live
        out = {
            key: (v[0], v[1])
            for key, v in self._node_rejects.items()
            if live is None or not live.was_forgotten(key[0])
        }
        self._node_rejects = {}
        self._unnamed.clear()  # a new window of QUARANTINE_PER_KEY
        return out

    def handle(self, topic: str, payload: bytes) -> Item:
        """Validate one message; see the module docstring for the result."""
        self._received.inc()
        now = self.clock.time()
        parsed = self._sample_topics.get(topic) or self._parse(topic)
        node = None if parsed is None else parsed[0]
        verdict = self._accept(parsed, payload, now)
        if isinstance(verdict, _Problem):
            # A share group's leader counts rejected samples from its feed (observe), which
            # carries every member's share; status and inventory from every member's own.
            live = self.live
            in_view = not (live is not None and live.from_feed and parsed and parsed[1] == "sample")
            return self._reject(
                *verdict, topic=topic, payload=payload, node=node, now=now, in_view=in_view
            )
        return verdict

    def observe(self, topic: str, payload: bytes) -> bool:
        """A sample for the live view only: the leader's QoS 0 feed of every node's samples,
        which another collector of the share group stores (:mod:`collector.role`).

        Validated as :meth:`handle` validates it; never quarantined nor counted in the
        metrics (the collector that stores it does both), but a rejected one is counted in
        the node's rejects in the view, which counts a share group's rejected samples from
        the feed alone (:attr:`collector.live.LiveView.from_feed`). Returns whether it became
        its node's latest."""
        parsed = self._sample_topics.get(topic) or self._parse(topic)
        live = self.live
        if parsed is None or parsed[1] != "sample" or live is None:
            return False
        node = parsed[0]
        now = self.clock.time()
        observed = self._observed
        message: Sample | NodeStatus | Inventory | _Problem
        if observed is not None and not observed.take(node, len(payload), self.clock.monotonic()):
            message = _Problem("rate_limited", self._over_budget)
        else:
            message = self._decoded(node, "sample", payload, now)
        if isinstance(message, _Problem):
            if not live.was_forgotten(node):  # as in _reject
                live.on_reject(node, message.reason, now)
            return False
        return isinstance(message, Sample) and live.on_sample(message, now, feed=True)

    def _accept(
        self, parsed: tuple[str, str] | None, payload: bytes, now: float
    ) -> SampleRow | NodeUpdate | _Problem:
        """The store item of a valid message, or what is wrong with it."""
        if parsed is None:
            return _Problem("bad_topic", "topic is not capwatch/v1/nodes/<node>/<kind>")
        node, kind = parsed
        if kind not in _DECODERS:
            return _Problem("bad_topic", f"unknown message kind {kind!r}")
        if self.live is not None and not self.live.room_for(node):
            # Before decoding: a flood of invented node names costs a lookup a message, and
            # neither the store nor the view grows past the fleet's bound.
            return _Problem(
                "fleet_full", f"{self.live.max_nodes} nodes already tracked (max_nodes)"
            )
        budgets = self.budgets
        if budgets is not None and not budgets.take(node, len(payload), self.clock.monotonic()):
            # Before decoding too: over its budget, a node's message costs microseconds.
            return _Problem("rate_limited", self._over_budget)
        if not payload and kind in _RETAINED:
            self._cleared.inc()
            return NodeUpdate(node=node)
        message = self._decoded(node, kind, payload, now)
        if isinstance(message, _Problem):
            return message
        if isinstance(message, Sample):
            self._samples.inc()
            facts = gpu_facts(message.gpus)  # one pass over the GPUs for the view and the row
            if self.live is not None:
                self.live.on_sample(message, now, facts=facts)
            # Stored as validated and re-encoded (packed: the store's codec): unknown fields
            # (unbounded padding, in principle) and duplicate keys do not reach the store.
            return sample_row(
                message, pack_sample(message), now, rollups=self._rollups, facts=facts
            )
        if isinstance(message, NodeStatus):
            self._status.inc()
            update = NodeUpdate(node=node, status=message.status, status_ts=now)
            if self.live is not None:
                self.live.on_status(node, message.status, now)
            held = self._held.pop(node, None) if self._held else None
            if held is not None:  # the node is back: with its inventory (_hold)
                if self.live is not None:
                    self.live.on_inventory(held, now)
                update.inventory, update.inventory_ts = encode(held), now
            return update
        if self._held:
            self._held.pop(node, None)  # this one is newer
        self._inventory.inc()
        if self.live is not None:
            self.live.on_inventory(message, now)
        return NodeUpdate(node=node, inventory=encode(message), inventory_ts=now)

    def _decoded(
        self, node: str, kind: str, payload: bytes, now: float
    ) -> Sample | NodeStatus | Inventory | _Problem:
        """``payload`` on ``node``'s ``kind`` topic decoded and checked (its size, its schema,
        its node, a sample's time), or what is wrong with it."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            return _Problem("too_large", f"{len(payload)} bytes")
        try:
            message = _DECODERS[kind](payload)
        except SchemaError as exc:
            return _Problem(exc.reason, str(exc))
        except Exception as exc:
            # Whatever the decoder raises for a message is that message's fault: one reject,
            # never a crash that the broker would redeliver into every restart.
            return _Problem("undecodable", f"{type(exc).__name__}: {exc}")
        if message.node != node:
            return _Problem("topic_mismatch", f"payload node {message.node!r} != topic node")
        if isinstance(message, Sample):
            problem = self._timing_problem(message.ts, now)
            if problem is not None:
                return problem
        live = self.live
        at = None if live is None else live.forgotten_at(node)
        if at is not None and (message.ts is None or message.ts <= at + self.max_skew_s):
            stamped = (
                "no time of its own"
                if message.ts is None
                else f"stamped {message.ts - at:+.0f} s from its node's forget"
            )
            if isinstance(message, Inventory):
                self._hold(node, message)
            return _Problem(
                "forgotten",
                f"{stamped}, not after it by more than max_clock_skew_s ({self.max_skew_s:g} "
                "s): sent before `collector inventory forget` decommissioned the node",
            )
        return message

    def _hold(self, node: str, inventory: Inventory) -> None:
        """Keep a forgotten node's inventory for its return. An agent stamps its inventory
        once, at its start, and sends it again at each connect, so one that ran through the
        forget (cut off from the broker) sends an inventory stamped before it; and a broker
        delivers a retained inventory before the retained status. Refused alone, the node
        came back without one, out of every pool and capacity figure until its agent
        restarted: the status that brings it back brings this inventory too."""
        held = self._held
        held.pop(node, None)
        if len(held) >= _MAX_HELD_INVENTORIES:
            del held[next(iter(held))]
        held[node] = inventory

    def _timing_problem(self, ts: float, now: float) -> _Problem | None:
        """What is wrong with a sample's own time, or ``None``."""
        if ts - now > self.max_skew_s:
            return _Problem(
                "clock_skew",
                f"sample is {ts - now:.0f} s ahead of the collector's clock (more than "
                f"{self.max_skew_s:g} s): fix the node's time (NTP)",
            )
        if now - ts > self.max_age_s:
            return _Problem("too_old", f"sample is {now - ts:.0f} s old, past the retention window")
        return None

    def reject(self, reason: str, topic: str, payload: bytes, detail: str) -> Rejected:
        """Count and quarantine a message for a reason found after validation (the writer's)."""
        parsed = parse_topic(topic)
        node = parsed[0] if parsed is not None else None
        return self._reject(
            reason, detail, topic=topic, payload=payload, node=node, now=self.clock.time()
        )

    def _reject(
        self,
        reason: str,
        detail: str,
        *,
        topic: str,
        payload: bytes,
        node: str | None,
        now: float,
        in_view: bool = True,
    ) -> Rejected:
        """Count and (rate-limited) log a rejected message; return its quarantine row.
        ``in_view``: count it in the node's rejects in the live view too."""
        by_reason = self._rejected_by
        (by_reason.get(reason) or by_reason[OTHER_REASON]).inc()
        now_ms = round(now * 1000)
        live = self.live
        if node is not None and live is not None and live.was_forgotten(node):
            kept = False  # counted by reason only: as a node's reject, it would be back
        elif node is not None:
            if live is not None and in_view:
                live.on_reject(node, reason, now)
            key = (node, reason)
            if key not in self._node_rejects and len(self._node_rejects) >= _MAX_NODE_KEYS:
                key = ("*", reason)
            entry = self._node_rejects.setdefault(key, [0, now_ms])
            entry[0] += 1
            entry[1] = now_ms
            kept = entry[0] <= QUARANTINE_PER_KEY
        else:
            unnamed = self._unnamed[reason] = self._unnamed.get(reason, 0) + 1
            kept = unnamed <= QUARANTINE_PER_KEY
        mono = self.clock.monotonic()
        last = self._last_log.get(reason)
        if last is not None and mono - last < self._log_every_s:
            self._suppressed[reason] += 1
        else:
            self._last_log[reason] = mono
            log.warning(
                "message_rejected",
                reason=reason,
                topic=topic[:_TOPIC_CHARS],
                detail=detail[:_DETAIL_CHARS],
                suppressed_since_last=self._suppressed.pop(reason, 0),
            )
        return Rejected(
            QuarantineRow(
                now_ms,
                node,
                topic[:_TOPIC_CHARS],
                reason,
                detail[:_DETAIL_CHARS],
                bytes(payload[:_QUARANTINE_HEAD_BYTES]),
                len(payload),
            ),
            kept,
        )
