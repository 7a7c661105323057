"""Poll rack PDUs over SNMP (v2c GET of one OID each) for their input power: one task of
the collector, in the leader's term (as the Redfish poller).

Every ``interval_s`` a round starts: each PDU neither still busy with its last poll nor
backing off gets one GET, at most ``max_concurrency`` in flight, each bounded by
``timeout_s`` x (``retries`` + 1). Failures back off as the BMCs' do
(:func:`collector.polling.count_outcome`). One :class:`~pysnmp.entity.engine.SnmpEngine`
(one UDP socket) for every PDU.

A rack's draw is the sum of its PDUs' newest readings, handed on
(``on_rack``: :meth:`collector.polled.PolledPower.on_rack`) once every PDU of the rack has
answered at least once, as read at the oldest of them: so the rack's reading is fresh
(:meth:`collector.nodefacts.Staleness.fresh`) only while every one of its PDUs is.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from collector.nodefacts import PowerReading
from collector.pdu.metrics import PduMetrics
from collector.pdu.settings import PduSettings, PdusSettings
from collector.polling import count_outcome, on_grid
from shared.clock import Clock
from shared.logging import get_logger
from shared.schema import MAX_NODE_POWER_W

__all__ = ["PduPoller", "PduState"]

log = get_logger("collector.pdu")

SOURCE: Final = "pdu"
_MAX_PDU_W: Final = 1_000 * MAX_NODE_POWER_W
"""A reading above a thousand nodes at the wire schema's bound (100 MW) is a wrong OID or
scale, not a rack."""


@dataclass(eq=False, slots=True)
class PduState:
    """One PDU as the poller keeps it."""

    cfg: PduSettings
    community: str
    target: Any = None
    """pysnmp's UDP transport target (made at its first poll: resolves the host)."""
    busy: bool = False
    failures: int = 0
    retry_at: float = 0.0
    last_outcome: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    reading: tuple[float, float] | None = None
    """(watts, received) of its newest reading."""


class _PollError(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class PduPoller:
    """The collector's PDU poller; :meth:`run` until cancelled."""

    def __init__(
        self,
        settings: PdusSettings,
        on_rack: Callable[[str, PowerReading], None],
        clock: Clock,
        metrics: PduMetrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._on_rack = on_rack
        self._clock = clock
        self.metrics = metrics
        self._rng = rng or random.Random()
        default = settings.community.get_secret_value()
        self.pdus = [
            PduState(u, default if u.community is None else u.community.get_secret_value())
            for u in settings.units
        ]
        self._racks: dict[str, list[PduState]] = {}
        for p in self.pdus:
            self._racks.setdefault(p.cfg.rack, []).append(p)
        self._sem = asyncio.Semaphore(settings.max_concurrency)
        self._engine: Any = None

    async def run(self) -> None:
        """Poll in rounds until cancelled."""
        from pysnmp.hlapi.v3arch.asyncio import SnmpEngine  # noqa: PLC0415 (only when on)

        self._engine = SnmpEngine()
        log.info("pdu_polling", pdus=len(self.pdus), interval_s=self.settings.interval_s)
        try:
            async with asyncio.TaskGroup() as tg:
                await self._rounds(tg)
        finally:
            self._engine.close_dispatcher()

    async def _rounds(self, tg: asyncio.TaskGroup) -> None:
        async def one_round(now: float) -> None:
            for pdu in self.pdus:
                if pdu.busy or pdu.retry_at > now:
                    continue
                await self._sem.acquire()  # a slot, then the task (as the Redfish poller)
                pdu.busy = True
                tg.create_task(self._poll(pdu), name=f"pdu-poll-{pdu.cfg.label}")

        await on_grid(self._clock, self.settings.interval_s, one_round)

    async def _poll(self, pdu: PduState) -> None:
        outcome, detail, watts = "ok", "", 0.0
        began = self._clock.monotonic()
        s = self.settings
        try:
            async with asyncio.timeout(s.timeout_s * (s.retries + 1) + 1.0):
                watts = await self._read(pdu)
        except _PollError as exc:
            outcome, detail = exc.outcome, str(exc)
        except TimeoutError:
            outcome, detail = "timeout", f"no answer within {s.timeout_s:g} s"
        finally:
            self._sem.release()
            pdu.busy = False
            self.metrics.poll_seconds.observe(self._clock.monotonic() - began)
        self.metrics.poll_by[outcome].inc()
        count_outcome(
            pdu,
            outcome,
            now=self._clock.monotonic(),
            interval_s=s.interval_s,
            backoff_max_s=s.backoff_max_s,
            rng=self._rng,
            in_backoff=self.metrics.backoff,
            log=log,
            event="pdu_poll",
            pdu=pdu.cfg.label,
            rack=pdu.cfg.rack,
            detail=detail,
        )
        if outcome == "ok":
            pdu.reading = (watts, self._clock.time())
            self._hand_on(pdu.cfg.rack)

    def _hand_on(self, rack: str) -> None:
        readings = [p.reading for p in self._racks[rack]]
        if any(r is None for r in readings):
            return  # a PDU of the rack has never answered: its draw is not known
        self._on_rack(
            rack,
            PowerReading(
                sum(r[0] for r in readings if r is not None),
                SOURCE,
                min(r[1] for r in readings if r is not None),
                self.settings.interval_s,
            ),
        )

    async def _read(self, pdu: PduState) -> float:
        from pysnmp.error import PySnmpError  # noqa: PLC0415
        from pysnmp.hlapi.v3arch.asyncio import (  # noqa: PLC0415
            CommunityData,
            ContextData,
            ObjectIdentity,
            ObjectType,
            UdpTransportTarget,
            get_cmd,
        )

        s = self.settings
        if pdu.target is None:
            try:
                pdu.target = await UdpTransportTarget.create(
                    (pdu.cfg.host, pdu.cfg.port), timeout=s.timeout_s, retries=s.retries
                )
            except (PySnmpError, OSError) as exc:  # the host does not resolve
                raise _PollError("unreachable", f"{type(exc).__name__}: {exc}") from exc
        error, status, index, binds = await get_cmd(
            self._engine,
            CommunityData(pdu.community, mpModel=1),
            pdu.target,
            ContextData(),
            ObjectType(ObjectIdentity(pdu.cfg.oid)),
        )
        if error is not None:
            text = str(error)
            kind = "timeout" if "timeout" in text.lower() else "unreachable"
            raise _PollError(kind, text)
        if status:
            raise _PollError("snmp_error", f"{status.prettyPrint()} at {index}")
        (bind,) = binds
        value = bind[1]
        tag = type(value).__name__
        if tag in ("NoSuchObject", "NoSuchInstance", "EndOfMibView"):
            raise _PollError("no_reading", f"{pdu.cfg.oid}: {tag}")
        try:
            watts = float(int(value)) * pdu.cfg.scale
        except (TypeError, ValueError) as exc:
            raise _PollError("invalid", f"{pdu.cfg.oid}: {tag} is not a number") from exc
        if not 0.0 <= watts <= _MAX_PDU_W:
            raise _PollError("invalid", f"{pdu.cfg.oid}: {watts:g} W is out of range")
        return watts
