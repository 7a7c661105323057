"""Turn MQTT messages into store rows: validate, count, never raise.

:meth:`Ingestor.handle` is the hot path (one call per message). A message that fails any
check is counted under ``rejected_<reason>``, logged at most once per reason every
``log_every_s`` seconds, and dropped: it never reaches the store and never raises.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from collector.store.db import NodeUpdate, SampleRow
from shared.clock import Clock
from shared.errors import SchemaError
from shared.logging import get_logger
from shared.schema import Sample, decode_inventory, decode_sample, decode_status
from shared.topics import parse_topic

__all__ = ["Ingestor"]

log = get_logger("ingest")

_MAX_PAYLOAD_BYTES: Final = 1_000_000


def sample_row(sample: Sample, payload: bytes, received: float) -> SampleRow:
    """Summary columns of a validated sample."""
    gpus = sample.gpus
    util = power = None
    mem_used: int | None = None
    if gpus:
        utils = [g.util_pct for g in gpus if g.util_pct is not None]
        util = sum(utils) / len(utils) if utils else None
        # Interval power from the energy counter is the accurate figure; fall back to the
        # instantaneous reading for GPUs (or the first sample) that lack it.
        watts = [g.power_interval_w if g.power_interval_w is not None else g.power_w for g in gpus]
        known = [w for w in watts if w is not None]
        power = sum(known) if known else None
        mems = [g.mem_used_bytes for g in gpus if g.mem_used_bytes is not None]
        mem_used = sum(mems) if mems else None
    return SampleRow(
        sample.node,
        round(sample.ts * 1000),
        sample.seq,
        round(received * 1000),
        sample.interval_s,
        sample.cpu.pct,
        sample.mem.used_bytes,
        sample.mem.total_bytes,
        len(gpus),
        util,
        mem_used,
        power,
        sample.cpu_power_w,
        payload,
    )


class Ingestor:
    """Validates messages and keeps the counters.

    ``handle`` returns ``(row, None)`` for a good sample, ``(None, update)`` for a status
    or inventory message, and ``None`` for anything rejected.
    """

    def __init__(self, clock: Clock, *, log_every_s: float = 10.0) -> None:
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._log_every_s = log_every_s
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def handle(
        self, topic: str, payload: bytes
    ) -> tuple[SampleRow | None, NodeUpdate | None] | None:
        """Validate one message; see the class docstring for the result."""
        self.counters["received"] += 1
        parsed = parse_topic(topic)
        if parsed is None:
            return self._reject("bad_topic", topic, "topic is not capwatch/v1/nodes/<node>/<kind>")
        node, kind = parsed
        if len(payload) > _MAX_PAYLOAD_BYTES:
            return self._reject("too_large", topic, f"{len(payload)} bytes")
        now = self.clock.time()
        try:
            if kind == "sample":
                sample = decode_sample(payload)
                if sample.node != node:
                    return self._reject(
                        "topic_mismatch", topic, f"payload node {sample.node!r} != topic node"
                    )
                row = sample_row(sample, payload, now)
                self.counters["samples"] += 1
                return row, None
            if kind == "status":
                status = decode_status(payload)
                if status.node != node:
                    return self._reject("topic_mismatch", topic, "payload node != topic node")
                self.counters["status"] += 1
                return None, NodeUpdate(node=node, status=status.status, status_ts=now)
            if kind == "inventory":
                inventory = decode_inventory(payload)
                if inventory.node != node:
                    return self._reject("topic_mismatch", topic, "payload node != topic node")
                self.counters["inventory"] += 1
                return None, NodeUpdate(node=node, inventory=bytes(payload), inventory_ts=now)
        except SchemaError as exc:
            return self._reject(exc.reason, topic, str(exc))
        return self._reject("bad_topic", topic, f"unknown message kind {kind!r}")

    def _reject(
        self, reason: str, topic: str, detail: str
    ) -> tuple[SampleRow | None, NodeUpdate | None] | None:
        """Count and (rate-limited) log a rejected message; the result of handle() is None."""
        key = f"rejected_{reason}"
        self.counters[key] += 1
        self.counters["rejected"] += 1
        now = self.clock.monotonic()
        last = self._last_log.get(reason)
        if last is not None and now - last < self._log_every_s:
            self._suppressed[reason] += 1
            return None
        self._last_log[reason] = now
        log.warning(
            "message_rejected",
            reason=reason,
            topic=topic[:200],
            detail=detail[:300],
            suppressed_since_last=self._suppressed.pop(reason, 0),
        )
        return None
