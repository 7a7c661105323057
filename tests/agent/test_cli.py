"""The ``agent`` command line as an operator meets it: exit codes and one-line errors."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.spool import Spool
from shared.schema import decode_sample
from tests.agent.helpers import REPO, run_agent
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


@pytest.mark.parametrize("under", ["", "spool"])
def test_a_spool_dir_that_cannot_be_made_is_one_line_and_exit_2(tmp_path: Path, under: str) -> None:
    """``agent run --spool-dir`` naming a regular file, or a directory under one (a typo,
    a path under /proc): one line naming the setting and the path, exit 2 (it was a
    traceback, exit 1)."""
    (tmp_path / "file").write_text("")
    spool = tmp_path / "file" / under if under else tmp_path / "file"
    done = run_agent(
        "run", "--gpu-backend", "none", "--node-id", "n1", "--port", "1",
        "--spool-dir", str(spool), timeout_s=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"agent run: error: setting 'spool_dir': cannot use {spool}: "), line
    # what is wrong, not mkdir's bare "File exists" / "Not a directory" (probe11)
    assert ("is a file, not a directory" if not under else "on the way to") in line, line
    assert done.stdout == ""


def test_simulate_with_too_many_gpus_is_one_line_naming_the_flag() -> None:
    """``--gpus-per-node 65`` stops before connecting: one line naming the flag, exit 2."""
    done = run_agent("simulate", "--gpus-per-node", "65", "--port", "1", "--ticks", "1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "agent simulate: error: --gpus-per-node 65: use 0 to 64 (the wire schema's GPUs per node)"
    ]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("flag", "value"), [("--first-index", "-5"), ("--first-index", "4294967296"), ("--ticks", "-1")]
)
def test_simulate_with_an_index_or_ticks_out_of_range_is_one_line(flag: str, value: str) -> None:
    """Negative --first-index published samples the collector refused; --ticks -1 ran 0."""
    done = run_agent("simulate", flag, value, "--port", "1", "--ticks", "1")
    if flag == "--ticks":
        done = run_agent("simulate", flag, value, "--port", "1")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"agent simulate: error: {flag} {value}: use ")
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("simulate", "--fake-gpus"),
        ("simulate", "--node-id"),
        ("simulate", "--gpu-backend"),
        ("simulate", "--fake-mig"),
        ("inventory", "--interval"),
    ],
)
def test_a_flag_the_command_would_ignore_is_neither_offered_nor_taken(
    command: str, flag: str
) -> None:
    """``agent simulate`` makes its own nodes (xname ids, --gpus-per-node fake GPUs) and
    ``agent inventory`` takes no samples: their --help does not offer flags they would
    ignore, and argparse refuses them (exit 2) instead of running without them."""
    assert flag not in run_agent(command, "--help").stdout
    done = run_agent(command, flag, "2", "--port", "1")
    assert done.returncode == 2
    assert f"agent {command}: error: unrecognized arguments: {flag} 2" in done.stderr
    assert done.stderr.startswith(f"usage: agent {command} ")


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        ("run", "--interval", "5m"),
        ("simulate", "--interval", "5 minutes"),
        ("sample", "--wait", "1s"),
    ],
)
def test_a_duration_for_a_seconds_flag_says_to_give_seconds(
    command: str, flag: str, value: str
) -> None:
    """``--interval 5m`` was 'argument --interval: invalid float value: '5m'' (argparse's
    words): the flag takes seconds, and the line now says so."""
    done = run_agent(command, flag, value, "--port", "1")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"agent {command}: error: argument {flag}: give seconds as a number (300 for 5 "
        f"minutes), got {value!r}"
    )


@pytest.mark.parametrize("wait", ["inf", "nan", "-1", "3601"])
def test_sample_with_a_wait_out_of_range_is_one_line_naming_the_flag(wait: str) -> None:
    """``agent sample --wait inf`` was a traceback (OverflowError from time.sleep) and
    ``--wait -1`` passed as 0: now one line naming the flag and its range, exit 2."""
    done = run_agent("sample", "--wait", wait)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"agent sample: error: --wait {float(wait)!r}: use 0 to 3600 seconds"
    )
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


def test_sample_help_shows_a_single_percent_sign() -> None:
    """``agent sample --help`` says "CPU %", not argparse's escaped "CPU %%"."""
    done = run_agent("sample", "--help")
    assert done.returncode == 0, done.stderr
    assert "rates (CPU %, bytes/s" in done.stdout
    assert "%%" not in done.stdout


def test_fake_mig_flags_put_fake_gpus_in_mig_mode() -> None:
    """``--fake-mig GPU=PROFILES`` once per GPU: those GPUs sample MIG devices (with their
    UUIDs) and processes in them; a layout an H100 cannot hold is one line, exit 2."""
    fake = ("--gpu-backend", "fake", "--fake-gpus", "2", "--node-id", "n1")
    done = run_agent(
        "sample", *fake, "--fake-mig", "0=3g.40gb,2g.20gb,2g.20gb", "--fake-mig", "1=7g.80gb"
    )
    assert done.returncode == 0, done.stderr
    sample = decode_sample(done.stdout.encode())
    assert [[m.profile for m in g.mig] for g in sample.gpus] == [
        ["3g.40gb", "2g.20gb", "2g.20gb"],
        ["7g.80gb"],
    ]
    assert all((m.uuid or "").startswith("MIG-") for g in sample.gpus for m in g.mig)
    done = run_agent("sample", *fake, "--fake-mig", "0=3g.40gb,4g.40gb,1g.10gb")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "agent sample: error: setting 'fake_mig' = '0=3g.40gb,4g.40gb,1g.10gb': "
        "GPU 0: MIG 3g.40gb, MIG 4g.40gb, MIG 1g.10gb needs more than 7 slices (fix it in the "
        "--config file, the CAPWATCH_* environment or the flag)"
    ]


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--seconds", "-1"], "demo: error: --seconds -1: use 1 to 86400"),
        (["--seconds", "nan"], "demo: error: --seconds nan: use 1 to 86400"),
        (["--nodes", "0"], "demo: error: --nodes 0: use 1 to 200000"),
    ],
)
def test_demo_refuses_bad_flags_before_starting_anything(
    tmp_path: Path, flags: list[str], line: str
) -> None:
    """scripts/demo.py checks --seconds and --nodes up front: one line, exit 2, nothing run."""
    workdir = tmp_path / "demo-run"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), *flags, "--dir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr.splitlines()) == (2, [line])
    assert not workdir.exists()


@pytest.mark.parametrize("site", [False, True])
def test_demo_deletes_no_directory_it_did_not_make(tmp_path: Path, site: bool) -> None:
    """``--dir`` naming a directory that holds someone's files (``--dir ~``, ``--dir .``):
    one line, exit 2, nothing deleted. The demo cleared whatever --dir named with
    shutil.rmtree before starting, so ``scripts/demo.sh --dir ~`` emptied a home directory.
    A directory an earlier demo made (its mark) and an empty one are used as before."""
    demo = [sys.executable, str(REPO / "scripts" / "demo.py"), "--seconds", "1", "--nodes", "1"]
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    flags = ["--site"] if site else []
    done = subprocess.run(
        [*demo, *flags, "--dir", str(mine)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert (mine / "thesis.tex").read_text() == "years of work"

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import demo_common  # noqa: PLC0415 (scripts/ is no package)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    with pytest.raises(SystemExit) as refused:
        demo_common.fresh_workdir(mine)
    assert refused.value.code == 2
    assert (mine / "thesis.tex").read_text() == "years of work"
    made = tmp_path / "made"
    demo_common.fresh_workdir(made)  # new: made and marked
    (made / "collector.log").write_text("an earlier run")
    demo_common.fresh_workdir(made)  # marked: cleared
    assert [p.name for p in made.iterdir()] == [demo_common.WORKDIR_MARK]
    empty = tmp_path / "empty"
    empty.mkdir()
    demo_common.fresh_workdir(empty)
    assert (empty / demo_common.WORKDIR_MARK).exists()


_RUN_SCRIPT = REPO / "deploy" / "agent-systemd-run.sh"


def _systemd_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(_RUN_SCRIPT), "--host", "broker.example", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )


def test_systemd_run_script_refuses_an_agent_path_whose_directory_is_missing() -> None:
    """``--agent nodir/agent``: one line naming the option, exit 2 (no cd error, no unit)."""
    done = _systemd_run("--agent", "nodir/agent", "--dry-run")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "agent-systemd-run.sh: error: --agent 'nodir/agent': no directory 'nodir' "
        "(pass the agent executable's path)"
    ]


def test_systemd_run_script_applies_the_sandbox_of_the_installed_unit() -> None:
    """Every hardening line of deploy/capwatch-agent.service's [Service] section is also a
    property of the transient unit (limits and start-up lines aside)."""
    done = _systemd_run("--agent", "/opt/capwatch/venv/bin/agent", "--dry-run")
    assert done.returncode == 0, done.stderr
    properties = set(shlex.split(done.stdout))
    not_sandbox = {"Type", "EnvironmentFile", "ExecStart", "Restart", "RestartSec"}
    not_sandbox |= {"SyslogIdentifier", "RestartPreventExitStatus"}
    not_sandbox |= {"CPUQuota", "MemoryHigh", "MemoryMax"}  # --cpu-quota, --memory-max
    unit = (REPO / "deploy" / "capwatch-agent.service").read_text().split("[Service]")[1]
    unit = unit.split("[Install]")[0]
    missing = [
        line
        for line in (raw.strip() for raw in unit.splitlines())
        if line
        and not line.startswith("#")
        and line.split("=")[0] not in not_sandbox
        and line not in properties
    ]
    assert missing == []


def test_a_spool_with_another_nodes_unsent_samples_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    """``agent run --node-id n2`` on a spool holding node n1's unsent samples (a renamed
    host, one directory given to two agents): one line naming the setting, both ids and the
    fix, exit 2; n1's samples stay."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20, max_age_s=3600.0, node="n1")
    spool.open()
    spool.append(b"n1's sample")
    spool.close()
    done = run_agent(
        "run", "--gpu-backend", "none", "--node-id", "n2", "--port", "1",
        "--spool-dir", str(tmp_path / "spool"), timeout_s=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("agent run: error: setting 'spool_dir': "), line
    assert "1 unsent samples of node 'n1'" in line
    assert "'n2'" in line
    assert "--spool-dir" in line
    assert (tmp_path / "spool" / "node").read_text() == "n1\n"


@pytest.mark.parametrize("how", ["flag", "env", "config"])
@pytest.mark.parametrize("seconds", [0, 59])
def test_a_buffer_too_short_to_keep_a_sample_is_one_line_and_exit_2(
    tmp_path: Path, how: str, seconds: int
) -> None:
    """``agent run --buffer 0s`` was accepted: the spool then dropped every sample the
    broker had not taken yet (all of them while it was away, the whole spool at start). It
    is refused before anything opens: one line naming the setting and the fix, exit 2."""
    spool = tmp_path / "spool"
    config = tmp_path / "agent.toml"
    config.write_text(f"buffer_s = {seconds}\n" if how == "config" else "")
    done = run_agent(
        "run", "--gpu-backend", "none", "--node-id", "n1", "--port", "1",
        "--spool-dir", str(spool), "--config", str(config),
        *(["--buffer", f"{seconds}s"] if how == "flag" else []),
        env={"CAPWATCH_BUFFER_S": str(seconds)} if how == "env" else {}, timeout_s=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("agent run: error: setting 'buffer_s'"), line
    assert "at least 1m" in line, line
    assert not spool.exists()


@pytest.mark.parametrize("command", ["sample", "inventory"])
def test_json_flag_is_accepted_where_the_output_is_json(command: str) -> None:
    """``--json``, which every command that prints data takes, on the two commands whose
    output is always JSON: accepted (it was "unrecognized arguments", exit 2), the same JSON."""
    extra = ("--wait", "0") if command == "sample" else ()
    fake = ("--gpu-backend", "fake", "--fake-gpus", "1", "--node-id", "n1")
    done = run_agent(command, *fake, *extra, "--json", timeout_s=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["node"] == "n1"
