"""The plain install (``pip install capwatch``) is the node agent alone: built from this tree
into a fresh virtualenv, it holds none of the collector's packages, publishes a sample to a
real Mosquitto, and its ``collector`` command names the extra to install instead of failing
with a traceback.

The virtualenv is made once per module (pip's cache makes later runs fast) with the same
package index as ``scripts/bootstrap.sh``: the environment's pip configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Final

import aiomqtt
import msgspec
import pytest

from collector.cli import EXTRA_MODULES
from collector.localbroker import MosquittoBroker
from shared.schema import Sample
from shared.topics import sample_topic

pytestmark = pytest.mark.integration

REPO: Final = Path(__file__).resolve().parents[2]
PYPROJECT: Final = tomllib.loads((REPO / "pyproject.toml").read_text())
_IGNORED: Final = shutil.ignore_patterns(
    ".git", ".venv*", "*.egg-info", "build", "__pycache__", ".*_cache", ".hypothesis", "demo-run"
)


def _env() -> dict[str, str]:
    """The caller's environment without capwatch settings or a PYTHONPATH onto the tree."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CAPWATCH_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }


def _name(requirement: str) -> str:
    """``"scipy>=1.11"`` -> ``"scipy"`` (normalised as pip lists it)."""
    for i, ch in enumerate(requirement):
        if not (ch.isalnum() or ch in "-_."):
            requirement = requirement[:i]
            break
    return requirement.lower().replace("_", "-")


@pytest.fixture(scope="module")
def agent_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with ``pip install <copy of this tree>``: no extras, not editable."""
    base = tmp_path_factory.mktemp("agent-install")
    # A copy: pip builds in the source tree (build/, *.egg-info), not in the developer's.
    src = base / "src"
    shutil.copytree(REPO, src, ignore=_IGNORED)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(src)],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.rmtree(src)
    return venv


def _installed(venv: Path) -> set[str]:
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    ).stdout
    return {_name(n) for n in json.loads(out)}


def test_the_collector_guard_names_every_package_of_the_extra() -> None:
    """``collector``'s one-line refusal checks exactly the ``collector`` extra's packages."""
    extra = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["collector"]}
    assert set(EXTRA_MODULES) == extra


def test_the_plain_install_has_the_agent_and_none_of_the_collectors_packages(
    agent_venv: Path,
) -> None:
    """Every runtime dependency is there; no package of an extra (collector, plot, broker,
    dev tools) and nothing they pull (numpy) is."""
    installed = _installed(agent_venv)
    assert "capwatch" in installed
    required = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert required <= installed
    extras = PYPROJECT["project"]["optional-dependencies"]
    optional = {_name(r) for group in extras.values() for r in group} - {"capwatch"}
    assert installed & (optional | {"numpy"}) == set()


def test_collector_in_the_plain_install_names_the_extra_in_one_line(agent_venv: Path) -> None:
    """``collector run`` exits 2 with one line saying ``pip install 'capwatch[collector]'``;
    ``collector --help`` still answers."""
    done = subprocess.run(
        [str(agent_venv / "bin" / "collector"), "run", "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("collector run: error: ")
    assert "pip install 'capwatch[collector]'" in lines[0]
    assert "aiosqlite" in lines[0]
    shown = subprocess.run(
        [str(agent_venv / "bin" / "collector"), "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert shown.returncode == 0
    assert "run the collector daemon" in shown.stdout


async def test_agent_run_from_the_plain_install_publishes_to_mosquitto(
    agent_venv: Path, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """``agent run --gpu-backend fake`` of the plain install publishes a valid sample with
    its GPUs on the real broker."""
    node = "plain-install-node"
    log = tmp_path / "agent.log"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe(sample_topic(node), qos=1)
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                str(agent_venv / "bin" / "agent"),
                "run",
                "--node-id",
                node,
                "--gpu-backend",
                "fake",
                "--fake-gpus",
                "2",
                "--interval",
                "1",
                "--host",
                mosquitto.host,
                "--port",
                str(mosquitto.port),
                "--spool-dir",  # its own: the user's default may hold another node's samples
                str(tmp_path / "spool"),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(),
            )
        try:
            message = await asyncio.wait_for(anext(aiter(client.messages)), timeout=60)
        except TimeoutError:
            pytest.fail(f"no sample from the agent: {log.read_text()[-2000:]}")
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), timeout=30)
    assert isinstance(message.payload, bytes)
    sample = msgspec.json.decode(message.payload, type=Sample)
    assert sample.node == node
    assert len(sample.gpus) == 2
    assert proc.returncode == 0, log.read_text()[-2000:]
