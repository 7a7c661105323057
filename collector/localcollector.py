"""Start ``collector run`` as a process of its own on this machine, and read its /metrics.

Used by the benchmarks and the integration tests that kill a collector (SIGKILL) and watch
another take over: a member of a share group, with its client id, store and /metrics port.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["metric", "start_member", "wait_for"]


def start_member(
    name: str,
    db: str,
    mqtt_port: int,
    metrics_port: int | None,
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    group: str = "site",
    extra: Sequence[str] = (),
    log_level: str = "warning",
) -> subprocess.Popen[bytes]:
    """``collector run --share-group group --client-id collector-<name>`` on ``db`` (a path
    or a ``postgresql://`` URL), serving /metrics on loopback ``metrics_port`` (``None``:
    no /metrics); its output is appended to ``log``."""
    argv = [
        sys.executable,
        "-m",
        "collector",
        "run",
        "--db",
        db,
        "--host",
        "127.0.0.1",
        "--port",
        str(mqtt_port),
        "--share-group",
        group,
        "--client-id",
        f"collector-{name}",
        *([] if metrics_port is None else ["--metrics-listen", f"127.0.0.1:{metrics_port}"]),
        "--log-level",
        log_level,
        *extra,
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=None if env is None else dict(env)
        )


def metric(port: int, name: str) -> float | None:
    """One unlabelled sample of ``name`` from the /metrics on ``port`` (``None``: not served
    yet, or no such sample)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(
    pred: Callable[[], object], timeout_s: float, what: str, step_s: float = 0.02
) -> float:
    """Poll ``pred`` until true; return the monotonic time it was (``TimeoutError`` naming
    ``what`` after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(step_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
