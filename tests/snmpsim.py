"""A real SNMP agent for tests: ``snmpsimd`` (Debian package ``snmpsim``) serving recorded
walks (``.snmprec``) on a free UDP port of loopback; each file's name is its community."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

from collector.localbroker import stop_process

__all__ = ["PDU_DATA", "SnmpSim", "skip_without_snmpsim"]

PDU_DATA = Path(__file__).parent / "data" / "pdu"
"""Walks of APC rack PDUs (PowerNet-MIB rPDU2DeviceStatusTable, 1.3.6.1.4.1.318.1.1.26.4.3):
rack-a reads 1234 hundredths of kW (12,340 W), rack-b 1111 (11,110 W)."""


def skip_without_snmpsim() -> None:
    """Skip with the fix when snmpsimd is not installed."""
    if shutil.which("snmpsimd") is None:
        pytest.skip("snmpsimd is not installed. Fix: sudo apt-get install -y snmpsim")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SnmpSim:
    """``with SnmpSim({"rack-a": path}) as sim:`` an agent answering community ``rack-a``
    from ``path`` at ``127.0.0.1:sim.port``."""

    def __init__(self, walks: dict[str, Path]) -> None:
        self.walks = walks
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SnmpSim:
        # snmpsimd run as root drops to nobody: its files must be readable (and its cache
        # writable) by nobody, so not under pytest's private tmp_path.
        d = self._dir = Path(tempfile.mkdtemp(prefix="capwatch-snmpsim-"))
        d.chmod(0o777)
        for community, path in self.walks.items():
            shutil.copy(path, d / f"{community}.snmprec")
            (d / f"{community}.snmprec").chmod(0o644)
        self.port = _free_udp_port()
        argv = [
            "snmpsimd",
            f"--data-dir={d}",
            f"--agent-udpv4-endpoint=127.0.0.1:{self.port}",
            f"--cache-dir={d / 'cache'}",
            "--logging-method=stderr",
        ]
        if os.geteuid() == 0:
            argv += ["--process-user=nobody", "--process-group=nogroup"]
        log = d / "log"
        with log.open("wb") as out:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"Listening at" not in log.read_bytes():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"snmpsimd did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            stop_process(self._proc)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
