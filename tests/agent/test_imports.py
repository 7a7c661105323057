"""What the agent imports: the test harness (fake NVML, simulator) only for commands using it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent.helpers import run_agent

_HARNESS = ("agent.fake_nvml", "agent.simulate")


def test_none_backend_runs_where_pynvml_cannot_be_imported(tmp_path: Path) -> None:
    """``--gpu-backend none`` never imports pynvml, so a broken binding cannot stop it."""
    # What nvidia-ml-py 12.535 did to the agent: an attribute read at import time failed.
    (tmp_path / "pynvml.py").write_text(
        "raise AttributeError(\"module 'pynvml' has no attribute 'NVMLLibraryMismatchError'\")\n"
    )
    done = run_agent(
        "inventory", "--gpu-backend", "none", "--node-id", "n1", "--no-log-json",
        pythonpath=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    inventory = json.loads(done.stdout)
    assert (inventory["node"], inventory["gpu_status"], inventory["gpus"]) == ("n1", "disabled", [])


@pytest.mark.parametrize(
    ("backend", "unloaded"), [("none", (*_HARNESS, "pynvml")), ("nvml", _HARNESS)]
)
def test_real_backends_do_not_import_the_test_harness(
    backend: str, unloaded: tuple[str, ...]
) -> None:
    """``agent sample`` with a real backend leaves the fake NVML and the simulator unloaded
    (and with ``none``, pynvml too)."""
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        "code = main(sys.argv[1:])\n"
        f"print(sorted(m for m in {unloaded!r} if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    done = run_agent(
        "sample", "--wait", "0", "--gpu-backend", backend, "--node-id", "n1", code=code
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_fake_backend_loads_the_fake_nvml() -> None:
    """The harness check above can see a loaded module: the fake backend does load one."""
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('agent.fake_nvml' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    done = run_agent(
        "sample", "--wait", "0", "--gpu-backend", "fake", "--fake-gpus", "1", code=code
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "True"


def test_help_imports_nothing_heavy() -> None:
    """``agent --help`` and ``agent run --help`` load no settings, MQTT, NVML or sampler code."""
    heavy = ("pydantic", "pydantic_settings", "aiomqtt", "pynvml", "psutil", "structlog",
             "asyncio", "msgspec", "agent.settings", "agent.service", *_HARNESS)  # fmt: skip
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    for args in (["--help"], ["run", "--help"], ["simulate", "--help"]):
        done = run_agent(*args, code=code)
        assert done.returncode == 0, done.stderr
        assert "usage: agent" in done.stdout
        assert done.stdout.splitlines()[-1] == "[]", args
