"""The ``agent`` command line as an operator meets it: exit codes and one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent.helpers import run_agent
from tests.integration.secure_broker import DeployedBroker, make_passwd


def _not_pem(tmp_path: Path) -> dict[str, str]:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    return {"CAPWATCH_MQTT__TLS_CA_FILE": str(ca)}


def _missing_key(tmp_path: Path) -> dict[str, str]:
    return {"CAPWATCH_MQTT__TLS_CERT_FILE": str(tmp_path / "absent-cert.pem")}


@pytest.mark.parametrize(
    "make_env",
    [
        lambda _: {"CAPWATCH_MQTT__TLS_CA_FILE": "/nonexistent"},
        _not_pem,
        _missing_key,
    ],
    ids=["ca_missing", "ca_not_pem", "cert_missing"],
)
def test_bad_tls_file_is_one_line_and_exit_2(
    tmp_path: Path, make_env: Callable[[Path], dict[str, str]]
) -> None:
    """``agent run`` with an unusable TLS file stops before sampling: one line, exit 2."""
    env = make_env(tmp_path)
    done = run_agent(
        "run", "--gpu-backend", "none", "--node-id", "n1", "--port", "1", env=env, timeout_s=30
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("agent run: error: setting 'mqtt.tls_"), line
    assert done.stdout == ""


def test_simulate_with_too_many_gpus_is_one_line_naming_the_flag() -> None:
    """``--gpus-per-node 65`` stops before connecting: one line naming the flag, exit 2."""
    done = run_agent("simulate", "--gpus-per-node", "65", "--port", "1", "--ticks", "1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "agent simulate: error: --gpus-per-node 65: use 0 to 64 (the wire schema's GPUs per node)"
    ]
    assert done.stdout == ""


def test_simulate_without_a_broker_is_one_line_and_exit_1() -> None:
    """``agent simulate --port 1`` (nothing listens): one line naming the broker, exit 1."""
    done = run_agent("simulate", "--port", "1", "--ticks", "1", "--nodes", "1")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "agent simulate: error: MQTT broker at 127.0.0.1:1: [Errno 111] Connection refused: "
        "check mqtt.host and mqtt.port (--host, --port) and that the broker is running"
    ]
    assert done.stdout == ""


@pytest.mark.integration
def test_simulate_with_a_wrong_password_is_one_line_naming_the_settings(tmp_path: Path) -> None:
    """A broker that refuses the credentials (Mosquitto, deploy/'s config): one line naming
    mqtt.username and mqtt.password, never the password; exit 2."""
    passwd = make_passwd(tmp_path / "passwd", {"sim-user": "right-pw"})
    with DeployedBroker(tmp_path / "broker", passwd) as broker:
        env = {"CAPWATCH_MQTT__USERNAME": "sim-user", "CAPWATCH_MQTT__PASSWORD": "wrong-pw"}
        done = run_agent(
            "simulate", "--port", str(broker.port), "--ticks", "1", "--nodes", "1", env=env
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"agent simulate: error: the MQTT broker at 127.0.0.1:{broker.port} refused the "
        "credentials ("
    ), lines[0]
    assert "mqtt.username (now 'sim-user') and mqtt.password" in lines[0]
    assert "wrong-pw" not in done.stderr
