"""The ``exec`` receiver's transport: run a command with a notification.

:mod:`collector.alerts.delivery` sends every notification through one path (outbox, one
worker per receiver, ``max_in_flight``, retries, dead letters); a receiver of
``kind = "exec"`` hands the body to :func:`run_action` instead of POSTing it.

The command (an argv list, no shell) gets:

* on stdin, the body a webhook receiver would get: Alertmanager's version-4 JSON;
* in its environment, only ``PATH`` and the receiver's ``env`` (the collector's own
  environment, which may hold secrets, is not passed on), and the group:
  ``CAPWATCH_STATUS`` (``firing``/``resolved``), ``CAPWATCH_RECEIVER``,
  ``CAPWATCH_GROUP_KEY``, ``CAPWATCH_GROUP_<NAME>`` for each of the group's labels and
  ``CAPWATCH_LABEL_<NAME>`` for each label its alerts have in common (``commonLabels``):
  ``CAPWATCH_LABEL_NODE`` when they all concern one node. Names are upper-cased.

Exit status 0 is delivered; any other status, a command that cannot be started, or one still
running after ``timeout_s`` (killed, with its process group) is retried with the webhook's
backoff until ``max_age_s``. The first 256 bytes of its output are kept with the outcome;
the rest is read and dropped as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from collector.settings import ReceiverSettings

__all__ = ["ActionResult", "action_env", "run_action"]

_HEAD_BYTES: Final = 256
_AFTER_KILL_S: Final = 5.0
"""How long a killed command's output may take to reach its end."""


class ActionResult(NamedTuple):
    """How the command ended: its exit status (``None``: not started, or killed at the
    timeout), the head of its output, and what went wrong in words."""

    exit_code: int | None
    head: str | None
    error: str | None


def _labels(prefix: str, labels: object) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        return {}
    return {
        f"{prefix}{name.upper()}": value
        for name, value in labels.items()
        # Label names are [a-zA-Z_][a-zA-Z0-9_]*, values any text but NUL (no env can hold one).
        if isinstance(name, str) and isinstance(value, str) and "\0" not in value
    }


def action_env(cfg: ReceiverSettings, body: str) -> dict[str, str]:
    """The command's environment for ``body`` (see the module docstring)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    return {
        **cfg.exec_env(),
        **_labels("CAPWATCH_LABEL_", doc.get("commonLabels")),
        **_labels("CAPWATCH_GROUP_", doc.get("groupLabels")),
        "CAPWATCH_STATUS": str(doc.get("status", "")),
        "CAPWATCH_RECEIVER": cfg.name,
        "CAPWATCH_GROUP_KEY": str(doc.get("groupKey", "")).replace("\0", ""),
    }


async def _feed(proc: asyncio.subprocess.Process, body: bytes) -> None:
    """``body`` to the command's stdin, then EOF; a command that does not read it is its own
    business (as with ``communicate``)."""
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(body)
        await proc.stdin.drain()
    proc.stdin.close()


async def _head(proc: asyncio.subprocess.Process) -> bytes:
    """The first bytes of the command's output; the rest is read and dropped as it comes
    (``communicate`` held all of it until the command ended: a command printing without end
    grew the collector by gigabytes before its timeout)."""
    assert proc.stdout is not None
    head = b""
    while chunk := await proc.stdout.read(65536):
        if len(head) < _HEAD_BYTES:
            head += chunk[: _HEAD_BYTES - len(head)]
    return head


async def run_action(cfg: ReceiverSettings, body: str) -> ActionResult:
    """Run ``cfg.command`` with ``body`` on stdin, at most ``cfg.timeout_s``."""
    assert cfg.command is not None  # the settings refuse an exec receiver without one
    try:
        proc = await asyncio.create_subprocess_exec(
            *cfg.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=action_env(cfg, body),
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
    except OSError as exc:
        return ActionResult(None, None, f"cannot run {cfg.command[0]}: {exc}"[:300])
    reader = asyncio.create_task(_head(proc), name="exec-output")
    try:
        async with asyncio.timeout(cfg.timeout_s):
            await _feed(proc, body.encode())
            head_bytes = await asyncio.shield(reader)
            code = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # Its output read to the end (every writer is dead now): wait() waits for the pipe
        # to close, and a pipe left full and unread never did (a chatty command's timeout
        # hung the receiver's slot for good). A child that left the process group and holds
        # the pipe is given up after _AFTER_KILL_S.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_AFTER_KILL_S):
                await reader
                await proc.wait()
        reader.cancel()
        return ActionResult(None, None, f"timed out after {cfg.timeout_s:g} s (killed)")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        reader.cancel()
        raise
    head = head_bytes.decode("utf-8", "replace")
    if code == 0:
        return ActionResult(0, head, None)
    return ActionResult(code, head, f"exit status {code}")
