"""``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, for both daemons.

The exposition is prometheus_client's (``make_wsgi_app``: text format, content negotiation,
gzip, ``name[]`` filters); the server is the standard library's WSGI server with one thread
per request, as ``prometheus_client.start_http_server`` runs it. Nothing here parses HTTP.

Why a thread and not the daemon's event loop: a scrape must never wait on ingestion, and
ingestion must never wait on a scrape (a slow or stuck Prometheus holds a socket, not the
loop). What a scrape reads from the loop's objects is either immutable (a wire ``Sample``) or
a snapshot the loop hands over (see ``collector/metrics.py``).

Paths:

* ``/metrics``: the registry, Prometheus text format (OpenMetrics when asked for).
* ``/healthz``: 200 while the process serves HTTP at all (liveness).
* ``/readyz``: 200 ``ready`` or 503 with the reason, from the daemon's ``ready()`` callback
  (readiness: the collector's broker and writer, the agent's last acknowledged publish).
* a daemon's own ``routes`` (the collector's ``/sd``: Prometheus HTTP service discovery).

With a web config file (:mod:`shared.webconfig`, exporter-toolkit's format) the server
speaks TLS (the handshake in the connection's own thread, under the request timeout, so a
client that stalls in it holds one thread, not the accept loop) and asks every request for
a basic-auth user: 401 with ``WWW-Authenticate: Basic`` otherwise, on every path.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from shared.errors import CapwatchError, ConfigError
from shared.logging import get_logger

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from prometheus_client.registry import CollectorRegistry

    from shared.webconfig import BasicAuth

__all__ = [
    "MAX_CONNECTIONS",
    "REQUEST_TIMEOUT_S",
    "MetricsServer",
    "Readiness",
    "Route",
    "check_listen",
    "parse_listen",
]

log = get_logger("metrics_http")

Readiness = Callable[[], tuple[bool, str]]
"""``ready()``: whether the daemon is ready, and a one-line reason (shown by ``/readyz``)."""
Route = Callable[[], tuple[str, bytes]]
"""A daemon's own path (the collector's ``/sd``): called in the request thread, returns
(content type, body)."""

_TEXT: Final = ("Content-Type", "text/plain; charset=utf-8")


def parse_listen(value: str, *, field: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9400`` for IPv6; port 0 picks a free one) as (host, port).

    A malformed value is a :class:`ConfigError` naming ``field`` and the expected form.
    """
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65_535:
        raise ConfigError(
            f"{field} {value!r} is not HOST:PORT: write e.g. 127.0.0.1:9474, 0.0.0.0:9400 "
            "or [::1]:9400 (port 0-65535)",
            field=field,
        )
    return host, int(port_text)


def check_listen(value: str | None) -> str | None:
    """The ``metrics_listen`` setting's validator (agent and collector): ``value`` unchanged,
    or :class:`ValueError` (pydantic's) saying what is wrong."""
    if value is not None:
        try:
            parse_listen(value, field="metrics_listen")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return value


def check_web_config(value: Path | None, metrics_listen: str | None) -> Path | None:
    """The ``web_config_file`` setting's validator (agent and collector): a web config with
    no server to apply it to (``metrics_listen`` unset) is a mistake, not a choice: its
    TLS and passwords would silently secure nothing."""
    if value is not None and metrics_listen is None:
        raise ValueError(
            f"{str(value)!r} secures the HTTP server, but metrics_listen is not set, so "
            "there is none: set metrics_listen (--metrics-listen HOST:PORT) or remove "
            "web_config_file"
        )
    return value


MAX_CONNECTIONS: Final = 16
"""Connections served at once; more are closed at once (a scraper or two, a probe, a human)."""
REQUEST_TIMEOUT_S: Final = 10.0
"""A connection idle this long mid-request is dropped (no thread held by a slow client)."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    """A scrape in flight must not keep the daemon from exiting."""
    allow_reuse_address = True
    max_connections = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.active = 0
        """Connections being served now."""
        self.refused = 0
        """Connections closed because ``max_connections`` were being served."""

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, at most ``max_connections`` of them; beyond, close."""
        with self._lock:
            full = self.active >= self.max_connections
            if full:
                self.refused += 1
            else:
                self.active += 1
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self.active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: a debug line, not a traceback on stderr."""
        log.debug("http_client_error", client=str(client_address))


class _QuietHandler(WSGIRequestHandler):
    """wsgiref logs every request to stderr; a scrape every 15 s is not news."""

    timeout = REQUEST_TIMEOUT_S

    def setup(self) -> None:
        """TLS: the handshake here, in this connection's thread, bounded by ``timeout``
        (a failed one ends the connection through the server's ``handle_error``)."""
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http_request", line=format % args)


def _family(host: str, field: str) -> socket.AddressFamily:
    """The address family of ``host`` (IPv6 for ``::``, ``[::1]``), as getaddrinfo sees it."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot resolve the /metrics host {host!r} ({exc.strerror}): set {field} "
            "(--metrics-listen) to a local address, e.g. 127.0.0.1:9474",
            field=field,
        ) from exc
    return infos[0][0]


def make_app(
    registry: CollectorRegistry,
    ready: Readiness,
    *,
    auth: BasicAuth | None = None,
    routes: Mapping[str, Route] | None = None,
) -> WSGIApplication:
    """The WSGI app: ``/healthz``, ``/readyz`` and ``routes`` here, ``/metrics``
    prometheus_client's; with ``auth``, every path behind its users."""
    own = dict(routes or {})
    from prometheus_client import make_wsgi_app  # noqa: PLC0415 (only when serving)

    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if auth is not None and not auth.check(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [_TEXT, ("WWW-Authenticate", "Basic")])
            return [b"Unauthorized\n"]
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [_TEXT])  # a new list: wsgiref adds to it
            return [b"ok\n"]
        if path == "/readyz":
            ok, reason = ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [_TEXT])
            return [reason.encode() + b"\n"]
        if path in own:
            try:
                content_type, payload = own[path]()
            except CapwatchError as exc:
                start_response("503 Service Unavailable", [_TEXT])
                return [str(exc).encode() + b"\n"]
            start_response("200 OK", [("Content-Type", content_type)])
            return [payload]
        if path in ("/metrics", "/"):
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        start_response("404 Not Found", [_TEXT])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


class MetricsServer:
    """``async with MetricsServer(host, port, registry, ready) as srv:`` serves until exit.

    Binding happens in ``__aenter__``: a port in use or an address the host does not have is
    a :class:`ConfigError` naming ``field`` before the daemon starts its tasks, and so is a
    bad ``web_config_file`` (read there, certificates included). ``srv.port`` is the bound
    port (useful with port 0).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Readiness,
        *,
        field: str = "metrics_listen",
        max_connections: int = MAX_CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        web_config_file: Path | None = None,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.host = host
        self._routes = routes
        self._web_config_file = web_config_file
        self._registry = registry
        self._ready = ready
        self._max_connections = max_connections
        self._request_timeout_s = request_timeout_s
        self.port = port
        self._field = field
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> Self:
        tls: ssl.SSLContext | None = None
        auth: BasicAuth | None = None
        if self._web_config_file is not None:
            from shared.webconfig import load_web_config  # noqa: PLC0415 (yaml, bcrypt)

            web = load_web_config(self._web_config_file)
            tls, auth = web.tls, web.auth
        app = make_app(self._registry, self._ready, auth=auth, routes=self._routes)
        family = _family(self.host, self._field)
        server_class = type(
            "_BoundServer",
            (_Server,),
            {"address_family": family, "max_connections": self._max_connections},
        )
        handler = type("_Handler", (_QuietHandler,), {"timeout": self._request_timeout_s})
        try:
            server: WSGIServer = make_server(
                self.host, self.port, app, server_class, handler_class=handler
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for /metrics on {self.host}:{self.port}: {exc.strerror}: "
                f"choose a free port or a local address in {self._field} (--metrics-listen)",
                field=self._field,
            ) from exc
        assert isinstance(server, _Server)
        if tls is not None:
            server.socket = tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info(
            "metrics_listening",
            host=self.host,
            port=self.port,
            tls=tls is not None,
            basic_auth=auth is not None,
        )
        return self

    def active(self) -> int:
        """Connections being served now."""
        return 0 if self._server is None else self._server.active

    def refused(self) -> int:
        """Connections closed because the limit was reached."""
        return 0 if self._server is None else self._server.refused

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # shutdown() waits for serve_forever's loop to notice (<= poll_interval): not on the loop.
        await asyncio.shield(asyncio.to_thread(_close, server))


def _close(server: _Server) -> None:
    server.shutdown()
    server.server_close()
