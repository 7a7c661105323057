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
backoff until ``max_age_s``. The first 256 bytes of its output are kept with the outcome.
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
    try:
        async with asyncio.timeout(cfg.timeout_s):
            out, _ = await proc.communicate(body.encode())
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return ActionResult(None, None, f"timed out after {cfg.timeout_s:g} s (killed)")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    head = out[:_HEAD_BYTES].decode("utf-8", "replace")
    code = proc.returncode
    if code == 0:
        return ActionResult(0, head, None)
    return ActionResult(code, head, f"exit status {code}")
