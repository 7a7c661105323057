"""systemd's notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.sdnotify import SdNotifier
from tests.helpers import wait_until


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound datagram socket; :attr:`got` in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.got: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.got


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    """A socket where systemd would listen."""
    fake = FakeSystemd(tmp_path / "notify")
    yield fake
    fake.sock.close()


def test_from_environ_reads_systemds_variables() -> None:
    """NOTIFY_SOCKET and WATCHDOG_USEC (µs) for this pid; nothing outside systemd."""
    assert SdNotifier.from_environ({}, 42) is None
    n = SdNotifier.from_environ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}, 42)
    assert n is not None
    assert n.watchdog_s == 30.0
    other = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}
    n2 = SdNotifier.from_environ(other, 42)
    assert n2 is not None
    assert n2.watchdog_s is None  # the watchdog is for another process
    abstract = SdNotifier.from_environ({"NOTIFY_SOCKET": "@sd"}, 1)
    assert abstract is not None
    assert abstract.address == "\0sd"


async def test_ready_then_pings_only_while_healthy_then_stopping(systemd: FakeSystemd) -> None:
    """READY=1 first; WATCHDOG=1 while healthy; none while unhealthy (a STATUS says why);
    pings again once healthy; STOPPING=1 at stop."""
    healthy = [True]
    checks_while_stuck = [0]

    def check() -> tuple[bool, str]:
        if not healthy[0]:
            checks_while_stuck[0] += 1
        return healthy[0], "ok" if healthy[0] else "writer stuck"

    notifier = SdNotifier(str(systemd.path), watchdog_s=0.15)
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(check, stop))
    await wait_until(lambda: systemd.drain().count("WATCHDOG=1") >= 2, what="pings")
    healthy[0] = False
    await wait_until(lambda: checks_while_stuck[0] >= 3, what="three checks while stuck")
    healthy[0] = True
    await wait_until(lambda: "STATUS=ok" in systemd.drain(), what="status ok")
    await wait_until(lambda: systemd.drain()[-1] == "WATCHDOG=1", what="pings resume")
    stop.set()
    await task
    got = systemd.drain()
    assert got[0] == "READY=1"
    assert got[-1] == "STOPPING=1"
    # Between the STATUS that said stuck and the one that said ok again: no ping at all.
    stuck_at = got.index("STATUS=writer stuck")
    ok_at = got.index("STATUS=ok")
    assert "WATCHDOG=1" not in got[stuck_at:ok_at]
    assert got[ok_at + 1] == "WATCHDOG=1"


def test_a_missing_socket_is_logged_not_raised(tmp_path: Path) -> None:
    """systemd gone (socket removed): the daemon goes on."""
    n = SdNotifier(str(tmp_path / "gone"))
    n.notify("READY=1")
    assert n.sent == []
