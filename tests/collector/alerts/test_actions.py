"""The ``exec`` receiver: a real command run through the outbox, like a webhook."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from collector.alerts.actions import ActionResult, action_env, run_action
from collector.settings import ReceiverSettings
from tests.collector.alerts.test_delivery import Rig, running
from tests.helpers import wait_until


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "action.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def _advancing(rig: Rig, done: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Move the fake clock on half a second at a time (retries fall due) until ``done``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "not reached in time"
        rig.step(0.5)
        await asyncio.sleep(0.02)


def _exec(command: list[str], **kw: object) -> ReceiverSettings:
    return ReceiverSettings.model_validate(
        {"name": "act", "kind": "exec", "command": command, **kw}
    )


async def test_command_gets_the_v4_body_on_stdin_and_the_groups_labels_in_its_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firing then resolved: each run reads the webhook's JSON on stdin, sees the labels as
    CAPWATCH_LABEL_*/CAPWATCH_GROUP_*, its configured env, and not the collector's env."""
    monkeypatch.setenv("CAPWATCH_MQTT__PASSWORD", "collector-secret")
    out = tmp_path / "runs"
    out.mkdir()
    script = _script(
        tmp_path,
        f'n=$(ls {out} | grep -c json)\ncat > {out}/$n.json\nenv > {out}/$n.env\necho "drained"\n',
    )
    receiver = _exec([str(script)], env={"CAPWATCH_RESUME": "1"})
    async with running(tmp_path, [receiver]) as rig:
        rig.switch.active.add("n1")
        rig.step()
        await wait_until(lambda: rig.outbox("state") == [("delivered",)], what="delivered")
        rig.switch.active.clear()
        rig.step()
        await wait_until(
            lambda: rig.outbox("state") == [("delivered",), ("delivered",)], what="resolved"
        )
        assert rig.outbox("attempts, last_status") == [(1, None), (1, None)]
    bodies = [json.loads((out / f"{i}.json").read_text()) for i in range(2)]
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    assert bodies[0]["receiver"] == "act"
    assert bodies[0]["version"] == "4"
    env = dict(
        line.split("=", 1) for line in (out / "0.env").read_text().splitlines() if "=" in line
    )
    assert env["CAPWATCH_STATUS"] == "firing"
    assert env["CAPWATCH_LABEL_NODE"] == env["CAPWATCH_GROUP_NODE"] == "n1"
    assert env["CAPWATCH_LABEL_ALERTNAME"] == "TestAlert"
    assert env["CAPWATCH_RECEIVER"] == "act"
    assert env["CAPWATCH_RESUME"] == "1"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "CAPWATCH_MQTT__PASSWORD" not in env
    assert "HOME" not in env


async def test_a_failing_command_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    """Exit 1 twice, then 0: three attempts, delivered; the output head is kept."""
    count = tmp_path / "count"
    script = _script(
        tmp_path,
        f"echo x >> {count}\n"
        f'[ "$(wc -l < {count})" -ge 3 ] || {{ echo "scontrol: down"; exit 1; }}\n',
    )
    async with running(tmp_path, [_exec([str(script)])]) as rig:
        rig.switch.active.add("n1")
        rig.step()
        await _advancing(rig, lambda: rig.outbox("state, attempts") == [("delivered", 3)])
        (head,) = rig.outbox("last_error")
    assert head == (None,)
    assert count.read_text().count("x") == 3


async def test_a_command_past_its_timeout_is_killed_and_dead_after_max_age(tmp_path: Path) -> None:
    """A command that hangs is killed at timeout_s; past max_age_s it is a dead letter
    naming the timeout."""
    script = _script(tmp_path, "sleep 60\n")
    receiver = _exec([str(script)], timeout_s=0.3, max_age_s=1.0)
    async with running(tmp_path, [receiver]) as rig:
        rig.switch.active.add("n1")
        rig.step()
        await _advancing(rig, lambda: rig.outbox("state") == [("dead",)])
        (row,) = rig.outbox("state, last_error")
    assert "timed out after 0.3 s" in row[1]


async def test_a_command_that_prints_without_end_costs_its_head_not_its_output(
    tmp_path: Path,
) -> None:
    """200 MB of output then exit 0: delivered, the head kept, the rest read and dropped as
    it comes (the whole output was held in the collector's memory until the command ended:
    ``yes`` in a drain script grew it by ~0.5 GB a second until timeout_s, 10 s by default)."""
    script = _script(tmp_path, "cat > /dev/null\nhead -c 200000000 /dev/zero | tr '\\0' x\n")
    tracemalloc.start()
    try:
        done = await run_action(_exec([str(script)], timeout_s=60), '{"status": "firing"}')
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done == ActionResult(0, "x" * 256, None)
    assert peak < 20 * 1024**2, f"{peak / 1024**2:.0f} MiB held"


async def test_a_command_printing_past_its_timeout_is_killed_in_time(tmp_path: Path) -> None:
    """``yes`` after reading the body: killed at timeout_s and the attempt ends (the kill
    waited for ever on a pipe nobody read any more; before that, the output was all kept)."""
    script = _script(tmp_path, "cat > /dev/null\nyes\n")
    tracemalloc.start()
    started = time.monotonic()
    try:
        async with asyncio.timeout(20):
            done = await run_action(_exec([str(script)], timeout_s=0.5), "{}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done == ActionResult(None, None, "timed out after 0.5 s (killed)")
    assert time.monotonic() - started < 5
    assert peak < 20 * 1024**2, f"{peak / 1024**2:.0f} MiB held"


async def test_a_command_that_cannot_start_is_retried_and_named(tmp_path: Path) -> None:
    """A missing program: retried, its error names it."""
    receiver = _exec([str(tmp_path / "absent.sh")], max_age_s=1.0)
    async with running(tmp_path, [receiver]) as rig:
        rig.switch.active.add("n1")
        rig.step()
        await _advancing(rig, lambda: rig.outbox("state") == [("dead",)])
        (row,) = rig.outbox("state, last_error")
    assert f"cannot run {tmp_path / 'absent.sh'}" in row[1]


def test_receiver_kind_needs_its_own_target() -> None:
    """exec needs a command and no url; a webhook a url and no command."""
    with pytest.raises(ValidationError, match="needs command"):
        ReceiverSettings.model_validate({"name": "a", "kind": "exec"})
    with pytest.raises(ValidationError, match="needs url"):
        ReceiverSettings.model_validate({"name": "a", "command": ["/bin/true"]})
    with pytest.raises(ValidationError, match="not a variable name"):
        _exec(["/bin/true"], env={"A-B": "1"})


def test_env_leaves_out_what_no_environment_can_hold() -> None:
    """A label value with NUL is left out; a body that is not JSON still runs."""
    cfg = _exec(["/bin/true"])
    body = json.dumps({"status": "firing", "commonLabels": {"node": "n\x001", "gpu": "3"}})
    env = action_env(cfg, body)
    assert env["CAPWATCH_LABEL_GPU"] == "3"
    assert "CAPWATCH_LABEL_NODE" not in env
    assert action_env(cfg, "not json")["CAPWATCH_STATUS"] == ""
