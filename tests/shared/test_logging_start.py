"""shared.logging in a fresh interpreter, as a daemon or command starts it: structlog loaded
without rich (shared/logging.py's ``_without_rich``), the two renderings the same as ever.

JSON (not a terminal): one object a line with ``event``, ``level``, ``component`` and a UTC
ISO ``timestamp``; an exception's traceback in ``exception``. Console: the level and the
key=values on the event's line, an exception's plain traceback after it. Below the level
set, nothing. rich, where installed, is importable again afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import sys
from shared.logging import configure_logging, get_logger
print("rich loaded" if "rich" in sys.modules else "rich not loaded")
configure_logging(sys.argv[1], json=sys.argv[2] == "json")
log = get_logger("probe")
log.debug("a_debug", x=1)
log.info("an_info", x=2)
log.warning("a_warning", node="n1")
try:
    raise RuntimeError("boom-42")
except RuntimeError:
    log.exception("it_failed", node="n1")
if sys.argv[3] == "yes":
    import rich  # importable again for whoever wants it
    print("rich imported", rich.__name__)
"""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run(level: str, mode: str) -> tuple[str, str]:
    rich = "yes" if importlib.util.find_spec("rich") is not None else "no"
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, level, mode, rich],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=_ROOT,
        check=True,
    )
    assert "rich not loaded" in done.stdout
    if rich == "yes":
        assert "rich imported rich" in done.stdout
    return done.stdout, _ANSI.sub("", done.stderr)


def test_json_lines_levels_and_the_traceback() -> None:
    _, err = _run("info", "json")
    lines = [json.loads(line) for line in err.splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("an_info", "info"),
        ("a_warning", "warning"),
        ("it_failed", "error"),
    ]
    for e in lines:
        assert e["component"] == "probe"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", e["timestamp"])
    assert lines[0]["x"] == 2
    exc = lines[2]["exception"]
    assert exc.startswith("Traceback (most recent call last):\n")
    assert 'File "<string>", line ' in exc
    assert exc.rstrip().endswith("RuntimeError: boom-42")


@pytest.mark.parametrize("level", ["debug", "warning"])
def test_the_level_filters(level: str) -> None:
    _, err = _run(level, "json")
    events = [json.loads(line)["event"] for line in err.splitlines()]
    expected = ["a_debug", "an_info"] if level == "debug" else []
    assert events == [*expected, "a_warning", "it_failed"]


def test_console_lines_and_a_plain_traceback() -> None:
    _, err = _run("info", "console")
    lines = err.splitlines()
    info = next(line for line in lines if "an_info" in line)
    assert re.search(r"\[info\s*\] an_info\s+component=probe x=2$", info), info
    assert any(re.search(r"\[warning\s*\] a_warning\s+component=probe node=n1$", x) for x in lines)
    failed = next(i for i, line in enumerate(lines) if "it_failed" in line)
    assert "[error" in lines[failed]
    rest = "\n".join(lines[failed + 1 :])
    assert "Traceback (most recent call last):" in rest  # the plain one, not rich's boxes
    assert "╭" not in err
    assert rest.rstrip().endswith("RuntimeError: boom-42")
    assert "a_debug" not in err
