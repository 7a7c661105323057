"""What both demos use (``scripts/demo.py`` and ``scripts/demo_site.py``, beside this file):
where the repository and its virtualenv's commands are, a banner, a command echoed and run,
a free loopback port, the hostile node's messages, and the webhook receiver on loopback that
checks each notification's signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "BIN",
    "DEFAULT_WORKDIR",
    "DEMO_SECRET",
    "ROOT",
    "WORKDIR_MARK",
    "Hooks",
    "banner",
    "free_port",
    "fresh_workdir",
    "hostile_node",
    "run_cli",
    "show_notifications",
]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


DEFAULT_WORKDIR = ROOT / "demo-run"
"""Where the demos work unless ``--dir`` says otherwise (ignored by git)."""
WORKDIR_MARK = ".capwatch-demo"
"""The file a demo leaves in its working directory: the next run may clear a directory that
holds it, and no other."""


def fresh_workdir(workdir: Path, prog: str = "demo") -> None:
    """Make ``workdir`` an empty working directory holding only :data:`WORKDIR_MARK`: a new
    one, an empty one, :data:`DEFAULT_WORKDIR` or one an earlier demo marked is cleared and
    used; anything else (``--dir ~``, ``--dir .``: someone's files) is refused in one line,
    exit 2, nothing deleted."""
    if workdir.is_symlink() or (workdir.exists() and not _made_by_a_demo(workdir)):
        print(
            f"{prog}: error: --dir {workdir} is not a directory a demo made (no "
            f"{WORKDIR_MARK} in it): give a new or empty directory; nothing deleted",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / WORKDIR_MARK).write_text(
        "made by capwatch's scripts/demo.sh: the next demo run with this --dir deletes it\n"
    )


def _made_by_a_demo(workdir: Path) -> bool:
    """Whether the demo may clear ``workdir``: the default one (a demo's before the mark
    too), one holding :data:`WORKDIR_MARK`, or an empty directory."""
    if not workdir.is_dir():
        return False
    return (
        workdir.resolve() == DEFAULT_WORKDIR.resolve()
        or (workdir / WORKDIR_MARK).is_file()
        or not any(workdir.iterdir())
    )


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run_cli(*args: str) -> None:
    print(f"$ {' '.join(args)}", flush=True)
    subprocess.run([str(BIN / args[0]), *args[1:]], check=False)


def hostile_node(host: str, port: int) -> int:
    """Publish what once crash-looped or poisoned the collector; return how many messages."""
    import asyncio  # noqa: PLC0415

    import aiomqtt  # noqa: PLC0415
    import msgspec  # noqa: PLC0415

    from agent.simulate import FleetSimulator  # noqa: PLC0415
    from shared.schema import encode  # noqa: PLC0415
    from shared.topics import sample_topic  # noqa: PLC0415

    sim = FleetSimulator(1, gpus_per_node=2, seed=666, interval_s=1, first_index=4096)
    node = sim.node_ids[0]
    good = msgspec.json.decode(encode(sim.sample(0, time.time(), 0)))
    evil = [
        b"{this is not json",
        msgspec.json.encode({**good, "ts": time.time() + 86_400}),  # a day ahead
        msgspec.json.encode({**good, "disk_io": {"read_bytes_per_s": 1e300}}),
        msgspec.json.encode(
            {**good, "gpus": [{**g, "mem_used_bytes": 2**62} for g in good["gpus"]]}
        ),
        msgspec.json.encode({**good, "cpu": {**good["cpu"], "per_core_pct": [1.0] * 150_000}}),
    ]

    async def publish() -> None:
        async with aiomqtt.Client(host, port, identifier=f"hostile-{node}") as client:
            for payload in evil * 2:  # twice: ten rejects make NodeRejectsRising fire
                await client.publish(sample_topic(node), payload, qos=1)

    asyncio.run(publish())
    return 2 * len(evil)


DEMO_SECRET = "demo-secret"


class Hooks:
    """A webhook receiver on loopback: records each notification, checks its signature."""

    def __init__(self) -> None:
        import threading  # noqa: PLC0415
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415

        self.got: list[tuple[bool, dict[str, Any]]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ts = self.headers.get("X-Capwatch-Timestamp", "")
                mac = hmac.new(DEMO_SECRET.encode(), ts.encode() + b":" + body, hashlib.sha256)
                ok = hmac.compare_digest(
                    mac.hexdigest(), self.headers.get("X-Capwatch-Signature", "")
                )
                hooks.got.append((ok, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def show_notifications(hooks: Hooks, am_url: str | None) -> None:
    for ok, body in hooks.got:
        names = sorted({f"{a['labels']['alertname']}[{a['status']}]" for a in body["alerts"]})
        print(
            f"webhook: {body.get('status')} groupKey={body.get('groupKey')} "
            f"alerts={','.join(names)} signature={'ok' if ok else 'BAD'}"
        )
    if not hooks.got:
        print("webhook: nothing received yet")
    if am_url is not None:
        import httpx  # noqa: PLC0415

        try:
            held = httpx.get(f"{am_url}/api/v2/alerts", timeout=5).json()
        except httpx.HTTPError as exc:
            print(f"Alertmanager: not reachable ({exc})")
            return
        for a in held:
            print(
                f"Alertmanager holds {a['labels']['alertname']} node={a['labels'].get('node')} "
                f"fingerprint={a['fingerprint']} state={a['status']['state']}"
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def readyz(port: int) -> str:
    """The collector's ``/readyz`` body on loopback ``port`` (``ready; connected; ...``,
    ``ready: leader (token N)``, or what is not ready); '' when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return str(resp.read().decode().strip())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        body = getattr(exc, "read", None)
        return body().decode().strip() if callable(body) else ""


def wait_counted(db: Path, name: str, at_least: int, timeout_s: float) -> None:
    """Wait until the store's ``counters`` row ``name`` (this collector's, written every ~2 s)
    is at least ``at_least``, or ``timeout_s`` passes: the queries after print it, and a
    short run (``--seconds 3``) could otherwise print them before the flush that counts the
    hostile node's rejects."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
            try:
                row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            row = None
        if row is not None and row[0] >= at_least:
            return
        time.sleep(0.2)


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> bool:
    """Wait until the collector ``proc`` serving /metrics on ``port`` is ready (subscribed
    to the broker, its first commit done); ``False`` if it exits or ``timeout_s`` passes.

    What a node publishes before the collector's first subscription reaches no one: the
    broker holds QoS 1 messages only for a session that has subscribed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if readyz(port).startswith("ready"):
            return True
        time.sleep(0.1)
    return False


def stop_all(procs: Iterable[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """SIGTERM each process still running, in the order given (15 s, then SIGKILL); print how
    each ended."""
    for name, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"{name} stopped ({proc.returncode})")
