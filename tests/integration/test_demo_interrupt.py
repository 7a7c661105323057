"""``scripts/demo.sh`` interrupted by Ctrl-C mid-run: it ends promptly, says so in one line,
and leaves no process behind. A terminal's Ctrl-C sends SIGINT to the whole foreground
process group: the demo, its broker, collector, agents and simulator at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
_DEFAULT_SIGINT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def _group(pgid: int) -> list[str]:
    """The processes still in process group ``pgid`` (zombies included), as ``ps`` shows them."""
    out = subprocess.run(
        ["ps", "-eo", "pgid=,pid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.split()[0] == str(pgid)]


def _demo(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``scripts/demo.py`` in a process group of its own (as a terminal's foreground job),
    with SIGINT at its default (a test runner's may not be); stdout and stderr together."""
    argv = [sys.executable, "-c", _DEFAULT_SIGINT_THEN_EXEC, str(REPO / "scripts" / "demo.py")]
    return subprocess.Popen(
        [*argv, *args, "--dir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
        bufsize=1,
        env=env,
    )


def _read_until(proc: subprocess.Popen[str], prefix: str, out: list[str], timeout_s: float) -> None:
    """Read ``proc``'s lines into ``out`` until one starts with ``prefix``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        out.append(line)
        if line.startswith(prefix):
            return
        assert time.monotonic() < deadline, "".join(out)


def _end(proc: subprocess.Popen[str]) -> None:
    """Kill what is left of ``proc``'s group and close its output."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_ctrl_c_mid_demo_stops_everything_promptly_without_a_traceback(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    proc = _demo(workdir, "--nodes", "4", "--seconds", "60")
    out: list[str] = []
    try:
        assert proc.stdout is not None
        _read_until(proc, "collecting for", out, 60)
        time.sleep(2.0)  # mid-collection: every part is up and publishing
        interrupted = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out.append(proc.stdout.read())
        code = proc.wait(timeout=30)
        took = time.monotonic() - interrupted
        time.sleep(0.5)
        left = _group(proc.pid)
    finally:
        _end(proc)
    text = "".join(out)
    assert left == [], text
    assert code == 130, text
    assert "Traceback" not in text
    assert "demo: interrupted" in text
    assert "stopped (None)" not in text  # nothing had to be SIGKILLed after 15 s
    assert took < 12, f"{took:.1f} s\n{text}"


_SLOW_COLLECTOR = """\
import sys, time
if sys.orig_argv[1:2] and sys.orig_argv[1].endswith("/collector") and "run" in sys.orig_argv:
    time.sleep(5)
"""


def test_the_hostile_node_reaches_a_collector_slow_to_start(tmp_path: Path) -> None:
    """The demo started its agents and the hostile node on a timer (1 s, then 2 s after the
    collector): on a loaded machine the collector subscribed after the hostile node had
    published, the broker held nothing for it, and the demo showed 'rejected ... 0', no
    alerts and no webhooks. Here the collector's process starts 5 s late (a
    ``sitecustomize`` that sleeps in ``collector run`` only)."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(_SLOW_COLLECTOR)
    workdir = tmp_path / "demo-run"
    proc = _demo(
        workdir, "--nodes", "2", "--seconds", "3", env={**os.environ, "PYTHONPATH": str(slow)}
    )
    out: list[str] = []
    try:
        assert proc.stdout is not None
        _read_until(proc, "== collector alerts", out, 180)
        os.killpg(proc.pid, signal.SIGINT)
        out.append(proc.stdout.read())
        proc.wait(timeout=30)
    finally:
        _end(proc)
    text = "".join(out)
    assert "rejected since the collector started: 10 " in text, text
