"""Mosquitto running what ``deploy/`` ships: its mosquitto.conf and ACL, users in a passwd file.

:func:`deployed_config` derives the test broker's configuration from
``deploy/mosquitto.conf`` line by line: only paths, ports and the user to run as change (each
replaced line must exist exactly once, so a reworded deploy file fails loudly instead of
being tested half). It can switch on the commented TLS listener block, with certificates from
:func:`make_pki`, and drop lines to show what they protect against.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from collector.localbroker import BrokerProcess, find_mosquitto, free_port
from shared.errors import CapwatchError
from tests.helpers import skip_without_mosquitto

__all__ = [
    "DEPLOY",
    "Connection",
    "DeployedBroker",
    "Pki",
    "deployed_config",
    "make_passwd",
    "make_pki",
    "need_mosquitto_tools",
]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_HOST = "127.0.0.1"


def need_mosquitto_tools() -> tuple[str, str]:
    """Paths of mosquitto and mosquitto_passwd; skips the test (fails under CI) without them."""
    binary, passwd_tool = find_mosquitto(), shutil.which("mosquitto_passwd")
    if binary is None:
        skip_without_mosquitto("mosquitto")
    if passwd_tool is None:
        skip_without_mosquitto("mosquitto_passwd")
    return binary, passwd_tool


def make_passwd(path: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file with ``users`` (name -> password), as deploy/README.md does."""
    _, passwd_tool = need_mosquitto_tools()
    path.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run([passwd_tool, "-b", str(path), user, password], check=True)
    return path


@dataclass(frozen=True)
class Pki:
    """A throw-away CA, a broker certificate for 127.0.0.1/localhost and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cn: str


def _openssl(*args: str | Path, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    subprocess.run([openssl, *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(directory: Path, *, client_cn: str) -> Pki:
    """Create the certificates with the openssl CLI (EC P-256 keys: fast to generate)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-days", "2", "-subj", "/CN=capwatch test CA",
        "-keyout", "ca.key", "-out", "ca.crt", cwd=directory,
    )  # fmt: skip
    # Python checks the subjectAltName (not the CN) against the host it connects to.
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", client_cn)):
        _openssl(
            "req", *ec, "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            cwd=directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-days", "2", "-in", f"{name}.csr", "-CA", "ca.crt",
            "-CAkey", "ca.key", "-CAcreateserial", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt", cwd=directory,
        )  # fmt: skip
    return Pki(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        client_cn=client_cn,
    )


def _replace_once(lines: list[str], old: str, new: str) -> None:
    assert lines.count(old) == 1, f"deploy/mosquitto.conf no longer has the line {old!r}"
    lines[lines.index(old)] = new


def deployed_config(
    *,
    port: int,
    data_dir: Path,
    passwd: Path,
    tls: Pki | None = None,
    tls_port: int | None = None,
    mutual_tls: bool = False,
    without: Sequence[str] = (),
    acl: Path | None = None,
) -> str:
    """deploy/mosquitto.conf with paths moved into ``data_dir`` and the listener on ``port``.

    ``tls``: also uncomment the TLS listener block (on ``tls_port``, loopback), and with
    ``mutual_tls`` its require_certificate / use_identity_as_username lines. ``without``:
    drop every line equal to one of these (each must occur at least once). ``acl``: another
    ACL file instead of deploy/'s (e.g. one from before a line was added).
    """
    lines = (DEPLOY / "mosquitto.conf").read_text().splitlines()
    moved = {
        "listener 1883 127.0.0.1": f"listener {port} {_HOST}",
        "user mosquitto": f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        "pid_file /run/mosquitto/mosquitto.pid": f"pid_file {data_dir}/mosquitto.pid",
        "persistence_location /var/lib/mosquitto/": f"persistence_location {data_dir}/",
        "password_file /etc/mosquitto/passwd": f"password_file {passwd}",
        "acl_file /etc/mosquitto/capwatch.acl": f"acl_file {acl or DEPLOY / 'mosquitto.acl'}",
        "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {data_dir}/log",
    }
    if tls is not None:
        assert tls_port is not None, "a TLS listener needs tls_port"
        moved |= {
            "#listener 8883 0.0.0.0": f"listener {tls_port} {_HOST}",
            "#use_username_as_clientid true": "use_username_as_clientid true",
            "#certfile /etc/mosquitto/certs/broker.crt": f"certfile {tls.server_cert}",
            "#keyfile /etc/mosquitto/certs/broker.key": f"keyfile {tls.server_key}",
            "#cafile /etc/mosquitto/ca_certificates/capwatch-ca.crt": f"cafile {tls.ca_cert}",
            "#tls_version tlsv1.2": "tls_version tlsv1.2",
        }
        if mutual_tls:
            moved |= {
                "#require_certificate true": "require_certificate true",
                "#use_identity_as_username true": "use_identity_as_username true",
            }
    for old, new in moved.items():
        _replace_once(lines, old, new)
    for line in without:
        assert line in lines, f"deploy/mosquitto.conf has no line {line!r} to drop"
    return "\n".join(line for line in lines if line not in without) + "\n"


class Connection(NamedTuple):
    """One "New client connected" line of Mosquitto's log."""

    client_id: str
    """The id the broker used (with use_username_as_clientid: the username)."""
    clean_session: bool
    username: str | None


# Mosquitto 2.0: "New client connected from 127.0.0.1:35890 as node-a (p2, c0, k30, u'node-a')."
_CONNECTED = re.compile(
    r"New client connected from \S+ as (?P<id>\S+) \(p\d+, c(?P<clean>[01]), k\d+"
    r"(?:, u'(?P<user>[^']*)')?\)"
)


class DeployedBroker(BrokerProcess):
    """``mosquitto -c`` on a :func:`deployed_config`, started and stopped as a context manager.

    Its log (``log_path``) has one line per connection, naming the client id the broker
    actually used and the username.
    """

    def __init__(
        self,
        data_dir: Path,
        passwd: Path,
        *,
        tls: Pki | None = None,
        mutual_tls: bool = False,
        without: Sequence[str] = (),
        acl: Path | None = None,
    ) -> None:
        self.binary, _ = need_mosquitto_tools()
        self.host = _HOST
        self.port = free_port(_HOST)
        self.tls_port = free_port(_HOST) if tls is not None else None
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = data_dir / "mosquitto.conf"
        self.config_path.write_text(
            deployed_config(
                port=self.port,
                data_dir=data_dir,
                passwd=passwd,
                tls=tls,
                tls_port=self.tls_port,
                mutual_tls=mutual_tls,
                without=without,
                acl=acl,
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Mosquitto's log file (deploy's log_dest, moved)."""
        return self.data_dir / "log"

    def log_text(self) -> str:
        """What Mosquitto has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connections(self) -> list[Connection]:
        """Every client connection accepted so far, oldest first."""
        return [
            Connection(m["id"], m["clean"] == "1", m["user"])
            for m in _CONNECTED.finditer(self.log_text())
        ]

    def start(self) -> None:
        """Start ``mosquitto -c`` and wait until every listener accepts connections."""
        stderr = self.data_dir / "stderr"
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        try:
            self._launch([self.binary, "-c", str(self.config_path)], ports=ports, output=stderr)
        except CapwatchError as exc:
            raise AssertionError(
                f"mosquitto did not start: {stderr.read_text(errors='replace')}{self.log_text()}"
            ) from exc
