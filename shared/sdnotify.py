"""systemd's notify protocol: ``READY=1`` once, ``WATCHDOG=1`` while the daemon is healthy.

The protocol is one datagram per message on the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(``@`` = Linux abstract namespace), as sd_notify(3) documents; ten lines, so no library
(``systemd-python`` needs libsystemd headers to build; ``sdnotify`` on PyPI is these same
lines, unmaintained). Only the entry point reads the environment
(:meth:`SdNotifier.from_environ`); a daemon gets a notifier, or ``None`` outside systemd.

The watchdog ping comes from a task on the daemon's own event loop and only while its
``healthy()`` says so: a stuck loop, a writer that stopped committing or a sampler blocked in
NVML stops the pings, and systemd restarts the unit after ``WatchdogSec``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping

from shared.logging import get_logger

__all__ = ["SdNotifier"]

log = get_logger("sdnotify")


class SdNotifier:
    """Sends notify messages to ``socket_path``; pings every ``watchdog_s / 3``."""

    def __init__(self, socket_path: str, *, watchdog_s: float | None = None) -> None:
        self.address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
        self.watchdog_s = watchdog_s
        self.sent: list[str] = []
        """Every message sent, in order (what a test checks)."""

    @classmethod
    def from_environ(cls, env: Mapping[str, str], pid: int) -> SdNotifier | None:
        """From systemd's variables (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``);
        ``None`` when not started by systemd with ``Type=notify``."""
        path = env.get("NOTIFY_SOCKET")
        if not path:
            return None
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        if usec.isdigit() and int(usec) > 0 and env.get("WATCHDOG_PID", str(pid)) == str(pid):
            watchdog_s = int(usec) / 1e6
        return cls(path, watchdog_s=watchdog_s)

    def notify(self, message: str) -> None:
        """Send one message (``READY=1``, ``STATUS=...``); a send error is logged, not raised:
        a daemon must not fail because its supervisor's socket went away."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify_failed", message=message, error=str(exc))
            return
        self.sent.append(message)

    async def run(self, healthy: Callable[[], tuple[bool, str]], stop: asyncio.Event) -> None:
        """``READY=1`` now, then ``WATCHDOG=1`` while ``healthy()``; ``STOPPING=1`` at stop."""
        self.notify("READY=1")
        period = None if self.watchdog_s is None else self.watchdog_s / 3
        was_ok = True
        while not stop.is_set():
            ok, reason = healthy()
            if ok != was_ok:
                if ok:
                    log.info("watchdog_resumed", reason=reason)
                else:
                    log.warning("watchdog_withheld", reason=reason)
                self.notify(f"STATUS={reason}")
                was_ok = ok
            if ok and period is not None:
                self.notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period if period is not None else 5.0):
                    await stop.wait()
        self.notify("STOPPING=1")
