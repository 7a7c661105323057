"""Poll BMCs' Redfish services for their nodes' input power: one task of the collector.

Every ``interval_s`` a round starts: each BMC that is neither still busy with its last poll
nor backing off gets a poll, at most ``max_concurrency`` in flight. A poll is one GET in the
steady state (the chassis' power resource, :mod:`collector.redfish.reading`); the first poll
of a BMC finds that resource (the chassis collection, when no ``chassis`` is set, and the
chassis), and a 404 later finds it again. Its reading goes to ``on_reading``
(:meth:`collector.live.LiveView.on_node_power`) with source ``redfish``, so capacity counts
it as any measured node power.

Nothing here waits on ingestion or holds it: the poller is its own task on the collector's
loop, its work per poll a few hundred microseconds of CPU (bench/bench_redfish.py), and a
slow or dead BMC holds one of the ``max_concurrency`` slots for at most ``timeout_s``, while
the rounds go on without it.

Failures (:func:`collector.polling.count_outcome`, shared with the PDU poller): a BMC whose
poll failed is retried after ``interval x 2^failures`` (at most ``backoff_max_s``) times a
random factor in [0.5, 1). A refused login (401/403) backs off to ``backoff_max_s`` at once:
BMCs lock an account after a few failed logins. Each change of a BMC's outcome is logged once
(``redfish_poll_failed``, ``redfish_poll_recovered``), not every poll; the credentials are
never logged.

Connections: one :class:`httpx.AsyncClient` per BMC (one connection, kept alive between
polls, so TLS is negotiated once, not every interval), the TLS contexts shared by every BMC
with the same CA settings. HTTP basic authentication on each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import httpx
import msgspec

from collector.nodefacts import PowerReading
from collector.polling import count_outcome, on_grid
from collector.redfish.credentials import Credentials
from collector.redfish.metrics import RedfishMetrics
from collector.redfish.reading import (
    CHASSIS_COLLECTION,
    ChassisLinks,
    chassis_links,
    chassis_members,
    environment_watts,
    pick_chassis,
    power_control_watts,
)
from collector.redfish.settings import BmcSettings, RedfishSettings
from shared.clock import Clock
from shared.errors import ConfigError, RedfishError
from shared.logging import get_logger

__all__ = ["BmcState", "RedfishPoller"]

log = get_logger("collector.redfish")

SOURCE: Final = "redfish"
"""The ``node_power_source`` of a polled reading (:data:`shared.schema.NODE_POWER_SOURCES`)."""
_RETRYABLE: Final = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
"""A kept-alive connection the BMC closed while idle fails like this on its next use: the
GET (idempotent) is sent once more on a new connection."""
_HEADERS: Final = {"Accept": "application/json", "OData-Version": "4.0"}

Resource = Literal["EnvironmentMetrics", "Power"]


@dataclass(eq=False, slots=True)
class BmcState:
    """One BMC as the poller keeps it (read by the scrape-time metrics source)."""

    cfg: BmcSettings
    user: str
    auth: httpx.BasicAuth
    verify: ssl.SSLContext
    client: httpx.AsyncClient | None = None
    resource: Resource | None = None
    path: str | None = None
    """The power resource read each poll (found by the first poll)."""
    power_path: str | None = None
    """``Power``, kept for when ``EnvironmentMetrics`` turns out to have no reading."""
    busy: bool = False
    failures: int = 0
    retry_at: float = 0.0
    """Monotonic time before which it is not polled (backoff)."""
    last_outcome: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    """Polls by outcome, since the collector started."""

    @property
    def node(self) -> str:
        """The node whose power this BMC reads."""
        return self.cfg.node


class _Round:
    """Polls of one round still running; the round's duration is recorded when none is."""

    __slots__ = ("pending", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.pending = 1


class _Stopped(Exception):  # noqa: N818 (a signal, not an error)
    """Raised inside the task group to end it (cancels every poll in flight)."""


class RedfishPoller:
    """The collector's Redfish poller; :meth:`run` until the ``stop`` event is set.

    Raises :class:`ConfigError` at construction when a CA file cannot be loaded or a BMC has
    no credentials (checked before anything runs: exit 2).
    """

    def __init__(
        self,
        settings: RedfishSettings,
        credentials: Credentials,
        on_reading: Callable[[str, PowerReading], None],
        clock: Clock,
        metrics: RedfishMetrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._on_reading = on_reading
        self._clock = clock
        self.metrics = metrics
        self._rng = rng or random.Random()
        assert settings.credentials_file is not None or not settings.bmcs
        credentials.check_covers(
            (b.node for b in settings.bmcs), settings.credentials_file or Path()
        )
        contexts: dict[tuple[Path | None, bool], ssl.SSLContext] = {}
        self.bmcs: list[BmcState] = []
        for i, b in enumerate(settings.bmcs):
            key = (b.ca_file or settings.ca_file, b.insecure)
            if key not in contexts:
                where = f"redfish.bmcs.{i}.ca_file" if b.ca_file else "redfish.ca_file"
                contexts[key] = _tls_context(*key, field=where)
            creds = credentials.of(b.node)
            assert creds is not None  # check_covers
            auth = httpx.BasicAuth(creds.username, creds.password.get_secret_value())
            self.bmcs.append(BmcState(b, creds.username, auth, contexts[key]))
        self._sem = asyncio.Semaphore(settings.max_concurrency)

    # -- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Poll in rounds until ``stop`` is set; then cancel the polls in flight and close
        every connection."""
        log.info(
            "redfish_polling",
            bmcs=len(self.bmcs),
            interval_s=self.settings.interval_s,
            max_concurrency=self.settings.max_concurrency,
        )
        async with self._clients():
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._rounds(tg), name="redfish-rounds")
                    await stop.wait()
                    raise _Stopped
            except* _Stopped:
                pass

    @contextlib.asynccontextmanager
    async def _clients(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for bmc in self.bmcs:
                client, bmc.client = bmc.client, None
                if client is not None:
                    await client.aclose()

    async def _rounds(self, tg: asyncio.TaskGroup) -> None:
        async def one_round(now: float) -> None:
            rnd = _Round(now)  # pending = 1: the dispatch itself, until every poll started
            for bmc in self.bmcs:
                if bmc.busy:
                    self.metrics.skipped.inc()
                    continue
                if bmc.retry_at > now:
                    continue
                # A slot first, then the task: at most max_concurrency polls exist at once
                # (not one task per BMC woken together: that would hold the loop, and
                # ingestion with it, for a whole fleet's worth of task steps).
                await self._sem.acquire()
                bmc.busy = True
                rnd.pending += 1
                tg.create_task(self._poll(bmc, rnd), name=f"redfish-poll-{bmc.node}")
            self._done(rnd)

        await on_grid(self._clock, self.settings.interval_s, one_round)

    # -- one poll

    async def _poll(self, bmc: BmcState, rnd: _Round) -> None:
        """One poll; its slot of the semaphore was taken by :meth:`_rounds`."""
        outcome = "ok"
        detail = ""
        watts = 0.0
        began = self._clock.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                watts = await self._read(bmc)
        except RedfishError as exc:
            outcome, detail = exc.outcome, str(exc)
        except (TimeoutError, httpx.TimeoutException):
            outcome, detail = "timeout", f"no answer within {self.settings.timeout_s:g} s"
        except httpx.ConnectError as exc:
            outcome, detail = _connect_outcome(exc)
        except httpx.TransportError as exc:
            outcome, detail = "transport", type(exc).__name__
        except (msgspec.DecodeError, RecursionError, httpx.DecodingError):
            outcome, detail = "invalid", "the answer is not JSON"
        except httpx.HTTPError as exc:  # the rest of httpx's tree: a broken exchange
            outcome, detail = "transport", type(exc).__name__
        finally:
            self._sem.release()
            bmc.busy = False
            self.metrics.poll_seconds.observe(self._clock.monotonic() - began)
            self._done(rnd)
        self._count(bmc, outcome, detail)
        if outcome == "ok":
            self._on_reading(
                bmc.node,
                PowerReading(watts, SOURCE, self._clock.time(), self.settings.interval_s),
            )

    def _done(self, rnd: _Round) -> None:
        rnd.pending -= 1
        if rnd.pending == 0:
            self.metrics.round_seconds.observe(self._clock.monotonic() - rnd.started)

    def _count(self, bmc: BmcState, outcome: str, detail: str) -> None:
        self.metrics.poll_by[outcome].inc()
        extra = {}
        if outcome == "auth":
            extra["user"] = bmc.user
            extra["hint"] = (
                f"the BMC refused the login: fix node {bmc.node!r}'s entry (or [default]) "
                "in redfish.credentials_file and restart the collector"
            )
        s = self.settings
        count_outcome(
            bmc,
            outcome,
            now=self._clock.monotonic(),
            interval_s=s.interval_s,
            backoff_max_s=s.backoff_max_s,
            rng=self._rng,
            in_backoff=self.metrics.backoff,
            log=log,
            event="redfish_poll",
            at_once=outcome == "auth",
            node=bmc.node,
            url=bmc.cfg.base_url,
            detail=detail,
            **extra,
        )

    async def _read(self, bmc: BmcState) -> float:
        """The node's input power in watts (:class:`RedfishError` and httpx's errors else)."""
        if bmc.path is None:
            await self._discover(bmc)
            assert bmc.path is not None
        try:
            doc = await self._get(bmc, bmc.path)
        except RedfishError as exc:
            if exc.outcome == "not_found":  # firmware updated, chassis renumbered
                bmc.path = bmc.resource = None
            raise
        if bmc.resource == "EnvironmentMetrics":
            w = environment_watts(doc)
            if w is not None:
                return w
            if bmc.power_path is None:
                raise RedfishError(
                    "EnvironmentMetrics has no PowerWatts.Reading", outcome="no_reading"
                )
            # This firmware's EnvironmentMetrics carries no power: read Power from now on.
            bmc.resource, bmc.path = "Power", bmc.power_path
            log.info("redfish_resource", node=bmc.node, resource="Power", path=bmc.path)
            doc = await self._get(bmc, bmc.path)
        w = power_control_watts(doc)
        if w is None:
            raise RedfishError(
                "Power has no PowerControl[0].PowerConsumedWatts", outcome="no_reading"
            )
        return w

    async def _discover(self, bmc: BmcState) -> None:
        chassis = bmc.cfg.chassis
        if chassis is not None:
            path = f"{CHASSIS_COLLECTION}/{chassis}"
            links = chassis_links(path, await self._get(bmc, path))
        else:
            members = chassis_members(await self._get(bmc, CHASSIS_COLLECTION))
            candidates = [chassis_links(p, await self._get(bmc, p)) for p in members[:16]]
            picked = pick_chassis(candidates)
            if picked is None:
                raise RedfishError(
                    "no chassis links EnvironmentMetrics or Power", outcome="no_reading"
                )
            links = picked
        _choose(bmc, links)
        log.debug(
            "redfish_resource",
            node=bmc.node,
            chassis=links.path,
            chassis_type=links.chassis_type,
            resource=bmc.resource,
            path=bmc.path,
        )

    async def _get(self, bmc: BmcState, path: str) -> object:
        """GET ``path`` as a JSON value (at most ``max_response_bytes``)."""
        client = bmc.client
        if client is None:
            client = bmc.client = self._client(bmc)
        try:
            return await self._get_once(client, path)
        except _RETRYABLE:
            return await self._get_once(client, path)

    async def _get_once(self, client: httpx.AsyncClient, path: str) -> object:
        limit = self.settings.max_response_bytes
        async with client.stream("GET", path) as resp:
            status = resp.status_code
            if status in (401, 403):
                raise RedfishError(f"HTTP {status} on {path}", outcome="auth")
            if status == 404:
                raise RedfishError(f"HTTP 404 on {path}", outcome="not_found")
            if status != 200:
                raise RedfishError(f"HTTP {status} on {path}", outcome="http_error")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise RedfishError(
                        f"{path}: answer over {limit} bytes (redfish.max_response_bytes)",
                        outcome="invalid",
                    )
        return msgspec.json.decode(body)

    def _client(self, bmc: BmcState) -> httpx.AsyncClient:
        s = self.settings
        return httpx.AsyncClient(
            base_url=bmc.cfg.base_url,
            auth=bmc.auth,
            verify=bmc.verify,
            headers=_HEADERS,
            timeout=httpx.Timeout(s.timeout_s),
            # One connection per BMC, kept between polls (a few BMCs close idle ones sooner:
            # _get sends again once when that happens).
            limits=httpx.Limits(
                max_connections=1,
                max_keepalive_connections=1,
                keepalive_expiry=max(30.0, 3 * s.interval_s),
            ),
            follow_redirects=False,
            trust_env=False,
        )


def _choose(bmc: BmcState, links: ChassisLinks) -> None:
    bmc.power_path = links.power
    if links.environment is not None:
        bmc.resource, bmc.path = "EnvironmentMetrics", links.environment
    elif links.power is not None:
        bmc.resource, bmc.path = "Power", links.power
    else:
        raise RedfishError(
            f"{links.path} links neither EnvironmentMetrics nor Power", outcome="no_reading"
        )


def _connect_outcome(exc: httpx.ConnectError) -> tuple[str, str]:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                "tls",
                f"certificate not verified ({cause.verify_message}): set ca_file (or "
                "insecure = true)",
            )
        if isinstance(cause, ssl.SSLError):
            return "tls", f"TLS failed ({cause.reason})"
        cause = cause.__cause__ or cause.__context__
    return "unreachable", str(exc) or type(exc).__name__


def _tls_context(ca: Path | None, insecure: bool, *, field: str) -> ssl.SSLContext:
    """A verifying client context for ``ca`` (the system store when ``None``); one that
    verifies nothing for ``insecure``. One per set of settings, shared by the BMCs."""
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"setting '{field}' = {str(ca)!r} cannot be loaded ({reason}): it must be the PEM "
            "certificate of the CA that signed the BMCs' certificates",
            field=field,
        ) from exc
