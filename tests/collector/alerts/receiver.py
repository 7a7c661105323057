"""A real webhook receiver on loopback (stdlib ``http.server`` in a thread) for delivery tests.

It answers from a script of responses (then 200) and records every request it got.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple


class Answer(NamedTuple):
    """One scripted response."""

    status: int = 200
    headers: dict[str, str] = {}  # noqa: RUF012 (a NamedTuple default, never mutated)
    body: bytes = b"ok"


class Request(NamedTuple):
    """One request as received."""

    path: str
    headers: dict[str, str]
    body: bytes
    peer: int = 0
    """The client's port: one per TCP connection."""


@dataclass
class Receiver:
    """Start with :meth:`serve` (a context manager); ``url`` is where to post."""

    script: list[Answer] = field(default_factory=list)
    port: int = 0
    keep_alive: bool = False
    """HTTP/1.1 with persistent connections (else each answer closes its connection)."""
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The receiver's URL."""
        return f"http://127.0.0.1:{self.port}/hook"

    def received(self) -> list[Request]:
        """A copy of the requests so far."""
        with self._lock:
            return list(self.requests)

    def script_answers(self, answers: list[Answer]) -> int:
        """Answer the next requests with ``answers`` (then 200), from now on; return how
        many requests came before (the ones answered by the old script)."""
        with self._lock:
            self.script[:] = answers
            return len(self.requests)

    def _answer(self, req: Request) -> Answer:
        with self._lock:
            self.requests.append(req)
            return self.script.pop(0) if self.script else Answer()

    def serve(self) -> _Serving:
        """Listen on ``port`` (0: a free one) until the context ends."""
        return _Serving(self)


class _Serving:
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Receiver:
        receiver = self.receiver

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if receiver.keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = receiver._answer(Request(self.path, headers, body, self.client_address[1]))
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
        server.daemon_threads = True
        receiver.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="receiver")
        self._thread.start()
        return receiver

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def each(requests: list[Request], header: str) -> Iterator[str]:
    """One header of each request."""
    for r in requests:
        yield r.headers[header.lower()]
