"""The web config file (exporter-toolkit's format): what it accepts, each mistake refused in
one line naming the key and the fix, and the basic-auth check with its cache."""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from shared.errors import ConfigError
from shared.webconfig import BasicAuth, load_web_config
from tests.agent.helpers import REPO, run_agent
from tests.integration.secure_broker import Pki, make_pki

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
"""Cost 4: the lowest bcrypt allows, so the tests do not wait on it."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"), client_cn="prometheus")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_full_config_gives_a_tls_context_and_users(tmp_path: Path, pki: Pki) -> None:
    """TLS 1.3 minimum, client certificates required against the CA, one user."""
    path = _write(
        tmp_path,
        f"tls_server_config:\n"
        f"  cert_file: {pki.server_cert}\n"
        f"  key_file: {pki.server_key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {pki.ca_cert}\n"
        f"  min_version: TLS13\n"
        f"basic_auth_users:\n"
        f"  prometheus: '{HASH}'\n",
    )
    web = load_web_config(path)
    assert web.tls is not None
    assert web.tls.minimum_version == ssl.TLSVersion.TLSv1_3
    assert web.tls.verify_mode == ssl.CERT_REQUIRED
    assert web.auth is not None
    assert set(web.auth.users) == {"prometheus"}


def test_relative_paths_are_relative_to_the_file_and_an_empty_file_secures_nothing(
    tmp_path: Path, pki: Pki
) -> None:
    """``cert_file: server.crt`` beside the config loads; an empty file: no TLS, no users."""
    path = pki.ca_cert.parent / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    web = load_web_config(path)
    assert web.tls is not None
    assert web.tls.verify_mode == ssl.CERT_NONE
    assert web.tls.minimum_version == ssl.TLSVersion.TLSv1_2
    empty = load_web_config(_write(tmp_path, ""))
    assert (empty.tls, empty.auth) == (None, None)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("tls_config: 1\n", r"tls_config is not a key capwatch knows: .*tls_server_config"),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  cert_fil: x\n",
            r"tls_server_config\.cert_fil is not a key capwatch knows: .*cert_file",
        ),
        ("tls_server_config:\n  cert_file: {cert}\n", r"key_file is missing: name the"),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: /nope/server.key\n",
            r"key_file /nope/server.key does not exist: give a PEM file",
        ),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {cert}\n",
            r"do not load .*: give a PEM certificate and its unencrypted private key",
        ),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_ca_file: {ca}\n",
            r"client_ca_file is set but client_auth_type is NoClientCert: set client_auth_type",
        ),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            r"RequireAndVerifyClientCert needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  client_auth_type: RequireAnyClientCert\n  client_ca_file: {ca}\n",
            r"Python's TLS cannot do: use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS14\n",
            r"min_version 'TLS14' is not one of TLS10, TLS11, TLS12, TLS13",
        ),
        (
            "basic_auth_users:\n  prometheus: s3cret\n",
            r"basic_auth_users\.prometheus is not a bcrypt hash .*: make one with",
        ),
        (
            "basic_auth_users:\n  prometheus: '$2b$12$short'\n",
            r"basic_auth_users\.prometheus is not a bcrypt hash",
        ),
        ("basic_auth_users: [prometheus]\n", r"basic_auth_users must be a mapping"),
        ("tls_server_config: [\n", r"not valid YAML \(line 2: expected the node content"),
        ("- a\n- b\n", r"must be a mapping of tls_server_config, basic_auth_users"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key_and_the_fix(
    tmp_path: Path, pki: Pki, body: str, says: str
) -> None:
    """A ConfigError on ``web_config_file`` whose single line says which key and what to do."""
    text = body.format(cert=pki.server_cert, key=pki.server_key, ca=pki.ca_cert)
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=says) as info:
        load_web_config(path)
    assert info.value.field == "web_config_file"
    assert str(info.value).startswith(f"web_config_file {path}: ")
    assert "\n" not in str(info.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    """The path is named with the reason."""
    with pytest.raises(ConfigError, match=r"web.yml: cannot read it \(No such file"):
        load_web_config(tmp_path / "web.yml")


def test_the_right_password_passes_and_anything_else_does_not() -> None:
    """Right user and password: yes. Wrong password, unknown user, no header, another
    scheme, broken base64: no."""
    auth = BasicAuth({"prometheus": HASH.encode()})
    assert auth.check(_basic("prometheus", "s3cret"))
    assert not auth.check(_basic("prometheus", "s3cret!"))
    assert not auth.check(_basic("grafana", "s3cret"))
    assert not auth.check(None)
    assert not auth.check("Bearer s3cret")
    assert not auth.check("Basic !!!")
    assert not auth.check("Basic " + base64.b64encode(b"no-colon").decode())


def test_a_verified_password_is_remembered_and_a_wrong_one_still_fails_after() -> None:
    """The first success is cached for (user, hash); a later wrong password is still
    refused (the cache holds the password's digest, not a yes for the user)."""
    auth = BasicAuth({"prometheus": HASH.encode()})
    assert auth.verified_users() == frozenset()
    assert not auth.check(_basic("prometheus", "wrong"))
    assert auth.verified_users() == frozenset()
    assert auth.check(_basic("prometheus", "s3cret"))
    assert auth.verified_users() == {"prometheus"}
    assert not auth.check(_basic("prometheus", "wrong"))
    assert auth.check(_basic("prometheus", "s3cret"))


def test_agent_run_with_a_bad_web_config_exits_2_with_one_line(tmp_path: Path) -> None:
    """``agent run --web-config-file`` with a bad hash: one line naming the key, exit 2,
    before it publishes anything."""
    path = _write(tmp_path, "basic_auth_users:\n  prometheus: plain\n")
    done = run_agent(
        "run",
        "--gpu-backend",
        "none",
        "--port",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
        "--web-config-file",
        str(path),
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("agent run: error: web_config_file ")
    assert "basic_auth_users.prometheus is not a bcrypt hash" in lines[-1]
    assert "Traceback" not in done.stderr


def test_collector_run_with_a_missing_key_file_exits_2_with_one_line(tmp_path: Path) -> None:
    """``collector run --web-config-file`` naming a key file that is not there: one line
    naming tls_server_config.key_file, exit 2."""
    cert = tmp_path / "server.crt"
    cert.write_text("not used: the key is checked first\n")
    path = _write(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: gone.key\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "run",
            "--db",
            str(tmp_path / "capwatch.db"),
            "--port",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--web-config-file",
            str(path),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("CAPWATCH_")},
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("collector run: error: web_config_file ")
    assert f"tls_server_config.key_file {tmp_path / 'gone.key'} does not exist" in last
    assert "Traceback" not in done.stderr


def test_the_shipped_example_loads_once_its_files_and_hash_are_real(
    tmp_path: Path, pki: Pki
) -> None:
    """deploy/web.yml.example: refused as shipped (placeholder hash), loaded with a real
    certificate, key and hash beside it."""
    example = (REPO / "deploy" / "web.yml.example").read_text()
    shipped = _write(tmp_path, example)
    (tmp_path / "metrics.crt").write_bytes(pki.server_cert.read_bytes())
    (tmp_path / "metrics.key").write_bytes(pki.server_key.read_bytes())
    with pytest.raises(ConfigError, match=r"basic_auth_users\.prometheus is not a bcrypt hash"):
        load_web_config(shipped)
    placeholder = next(w for w in example.split() if w.startswith("$2b$12$REPLACE"))
    web = load_web_config(_write(tmp_path, example.replace(placeholder, HASH)))
    assert web.tls is not None
    assert web.auth is not None
    assert web.auth.check(_basic("prometheus", "s3cret"))


@pytest.mark.parametrize("program", ["agent", "collector"])
def test_a_web_config_without_a_server_is_refused(tmp_path: Path, program: str) -> None:
    """``web_config_file`` without ``metrics_listen`` would secure nothing (no server):
    refused, naming both settings; with ``metrics_listen`` it loads."""
    from agent.settings import AgentSettings  # noqa: PLC0415
    from collector.settings import CollectorSettings  # noqa: PLC0415

    model = AgentSettings if program == "agent" else CollectorSettings
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\n")
    with pytest.raises(ValueError, match=r"web_config_file[\s\S]*metrics_listen is not set"):
        model.model_validate({"web_config_file": web})
    ok = model.model_validate({"web_config_file": web, "metrics_listen": "127.0.0.1:0"})
    assert ok.web_config_file == web
