"""A real Alertmanager (Debian: ``prometheus-alertmanager``) on a free loopback port.

Started with a minimal configuration (one route to a receiver that notifies nobody, no
cluster), its storage in the test's ``tmp_path``. Missing binary: the test is skipped with
a line saying how to install it; under ``CI=true`` it fails (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.localbroker import free_port, stop_process

_CONFIG = """\
route:
  receiver: nobody
  group_wait: 1h
receivers:
  - name: nobody
"""


def find_alertmanager() -> str | None:
    """The Alertmanager binary: Debian names it ``prometheus-alertmanager``."""
    for name in ("prometheus-alertmanager", "alertmanager"):
        path = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if path is not None:
            return path
    return None


@contextmanager
def running_alertmanager(tmp_path: Path) -> Iterator[str]:
    """Run Alertmanager until the context ends; yield its base URL."""
    binary = find_alertmanager()
    if binary is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("alertmanager is not installed; .ci/run must install it")
        pytest.skip("alertmanager is not installed (apt-get install prometheus-alertmanager)")
    home = tmp_path / "alertmanager"
    home.mkdir()
    (home / "alertmanager.yml").write_text(_CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={home / 'alertmanager.yml'}",
            f"--storage.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"alertmanager exited: {(home / 'log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("alertmanager did not become ready in 30 s")
            time.sleep(0.1)
        yield url
    finally:
        stop_process(proc)
        log.close()


def am_alerts(url: str, **params: str) -> list[dict[str, Any]]:
    """``GET /api/v2/alerts``: the alerts Alertmanager holds (active ones by default)."""
    resp = httpx.get(f"{url}/api/v2/alerts", params=params, timeout=5)
    resp.raise_for_status()
    alerts: list[dict[str, Any]] = resp.json()
    return alerts
