"""A Redfish service on loopback: DMTF's mockups served as DMTF's mockup server serves them.

``GET /redfish/v1/<path>`` answers ``<mockup>/<path>/index.json`` without its
``@Redfish.Copyright`` (Redfish-Mockup-Server's ``do_GET``), ``Content-Type:
application/json``, ``OData-Version: 4.0``; HTTP/1.1 with keep-alive; optional TLS. Unlike
the mockup server (which has no authentication), every resource but the service root asks
for HTTP basic authentication, as a BMC does (Redfish DSP0266 13.3: the service root is
open, the rest is not).

One server can stand for many BMCs by path (``/bmc/<n>/redfish/v1/...``, for the benchmark);
faults are set while it runs: ``delay_s`` (a slow BMC), ``overrides`` (a body served instead
of a resource's: garbage, an absurd reading). ``python -m tests.redfish MOCKUP PORT [CERT
KEY]`` serves one in the foreground (bench/bench_redfish.py runs it in its own process).
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import re
import ssl
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = ["DATA", "RACKMOUNT_2020", "RACKMOUNT_2022", "MockupBmc"]

DATA: Final = Path(__file__).resolve().parent / "data" / "redfish"
RACKMOUNT_2022: Final = DATA / "public-rackmount1-1.2.6"
"""EnvironmentMetrics ``PowerWatts.Reading`` 374 W beside Power ``PowerConsumedWatts`` 344 W."""
RACKMOUNT_2020: Final = DATA / "public-rackmount1-1.1.4"
"""Power only, ``PowerConsumedWatts`` 344 W."""

_PREFIX: Final = re.compile(r"^/bmc/\d{1,6}(?=/)")
_ROOTS: Final = ("/redfish/v1", "/redfish/v1/")


class MockupBmc:
    """A threaded HTTP server on 127.0.0.1 serving one mockup folder (context manager)."""

    def __init__(
        self,
        mockup: Path,
        *,
        username: str = "capwatch",
        password: str = "s3cret-pw",
        tls: tuple[Path, Path] | None = None,
        port: int = 0,
    ) -> None:
        self.mockup = mockup
        self._auth = b"Basic " + base64.b64encode(f"{username}:{password}".encode())
        self.delay_s = 0.0
        """Seconds each answer waits (a slow BMC)."""
        self.overrides: dict[str, bytes] = {}
        """Resource path (``/redfish/v1/...``) -> the body served instead, with status 200."""
        self.hits: Counter[str] = Counter()
        """Requests per resource path (prefix removed), whatever their answer."""
        self.refused = 0
        """Requests answered 401."""
        self.connections = 0
        """TCP connections accepted (keep-alive: one per client while it is kept)."""
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            # The handshake happens in the connection's own thread (Handler.setup), not in
            # accept(): a client that stops mid-handshake (a poll cancelled, a refused
            # certificate) once held the serving thread for good, and shutdown() with it.
            self._server.socket = ctx.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port: int = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def count(self, path: str) -> int:
        """Requests for ``path`` so far."""
        with self._lock:
            return self.hits[path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        bmc = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as BMCs' web servers

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.settimeout(10.0)
                    self.request.do_handshake()
                    self.request.settimeout(None)  # kept alive between rounds, as before
                super().setup()
                with bmc._lock:
                    bmc.connections += 1

            def do_GET(self) -> None:
                path = _PREFIX.sub("", self.path.split("?", 1)[0].split("#", 1)[0])
                with bmc._lock:
                    bmc.hits[path.rstrip("/") or "/"] += 1
                if bmc.delay_s:
                    time.sleep(bmc.delay_s)
                if path not in _ROOTS and not hmac.compare_digest(
                    self.headers.get("Authorization", "").encode(), bmc._auth
                ):
                    with bmc._lock:
                        bmc.refused += 1
                    self._send(401, _error("Base.1.0.NoValidSession"), basic=True)
                    return
                override = bmc.overrides.get(path.rstrip("/"))
                if override is not None:
                    self._send(200, override)
                    return
                body = _resource(bmc.mockup, path)
                if body is None:
                    self._send(404, _error("Base.1.0.ResourceMissingAtURI"))
                    return
                self._send(200, body)

            def _send(self, status: int, body: bytes, *, basic: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("OData-Version", "4.0")
                self.send_header("Content-Length", str(len(body)))
                if basic:
                    self.send_header("WWW-Authenticate", 'Basic realm="Redfish"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: pytest's output is the tests'

        return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # a round opens up to max_concurrency connections at once

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]
        # A client that hung up (a poll timed out, the poller stopped): nothing to report.


@functools.lru_cache(maxsize=256)
def _resource(mockup: Path, path: str) -> bytes | None:
    """The answer to GET ``path``: its index.json less the copyright (``None``: no such)."""
    if not path.startswith("/redfish/v1"):
        return None
    rel = path[len("/redfish/v1") :].strip("/")
    if ".." in rel.split("/"):
        return None
    f = mockup / rel / "index.json"
    if not f.is_file():
        return None
    doc: dict[str, object] = json.loads(f.read_text())
    doc.pop("@Redfish.Copyright", None)
    return json.dumps(doc, indent=4).encode()


def _error(message_id: str) -> bytes:
    return json.dumps(
        {"error": {"code": message_id, "message": message_id.rsplit(".", 1)[-1]}}
    ).encode()


if __name__ == "__main__":  # python -m tests.redfish MOCKUP PORT [CERT KEY]
    tls = (Path(sys.argv[3]), Path(sys.argv[4])) if len(sys.argv) > 4 else None
    with MockupBmc(Path(sys.argv[1]), port=int(sys.argv[2]), tls=tls) as served:
        print(served.url, flush=True)
        threading.Event().wait()
