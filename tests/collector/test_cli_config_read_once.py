"""A command reads its ``--config`` file once: from a pipe (``--config /dev/stdin``,
``--config <(envsubst < tmpl.toml)``) there is no second reading, and a second read gave
every setting its default, silently."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.paths import parse_target
from tests.collector.governance.hw_fleet import Spec, cli, make_store
from tests.helpers import db_rows


@pytest.fixture(autouse=True)
def _no_capwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("CAPWATCH_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a folder of its own: a default store (capwatch.db) is none of the test's."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@contextlib.contextmanager
def _piped(text: str) -> Iterator[str]:
    """``text`` behind a pipe, as ``--config /dev/fd/N`` names it."""
    read, write = os.pipe()
    try:
        os.write(write, text.encode())
        os.close(write)
        yield f"/dev/fd/{read}"
    finally:
        os.close(read)


async def test_lease_add_by_pattern_plans_on_the_configured_store(tmp_path: Path) -> None:
    """`lease add --pattern` read the settings again to plan the new pool: from a pipe, the
    plan read the default store (none here: exit 2; another one where there is one)."""
    db = await make_store(tmp_path, [Spec(f"x1000c0s{i}b0n0", gpus=4) for i in range(4)])
    start = dt.date.today().isoformat()
    with _piped(f"db_path = {json.dumps(str(db))}\n") as config:
        code, out, err = cli("lease", "add", "--config", config, "--tenant", "zinal",
                             "--pattern", "zinal:a100:8", "--start", start, "--json")  # fmt: skip
    assert (code, err) == (0, "")
    assert json.loads(out)["nodes"] == 2
    assert len(db_rows(parse_target(str(db)), "SELECT * FROM leases")) == 1


async def test_plot_usage_per_day_takes_the_configured_billing(tmp_path: Path) -> None:
    """`plot usage --month` read the settings again for the billing: from a pipe, the
    picture said the default currency. From a pipe it is the picture a file gives."""
    pytest.importorskip("matplotlib")
    db = await make_store(tmp_path, [Spec("x1000c0s0b0n0", gpus=4)])
    text = f'db_path = {json.dumps(str(db))}\n[billing]\ncurrency = "CHF"\n'
    file = tmp_path / "c.toml"
    file.write_text(text)
    pictures = []
    for name in ("file.png", "pipe.png"):
        out = tmp_path / name
        with _piped(text) as piped:
            config = str(file) if name == "file.png" else piped
            code, _, err = cli("plot", "usage", "--config", config, "--month", "2026-11",
                               "--out", str(out))  # fmt: skip
        assert (code, err) == (0, "")
        pictures.append(out.read_bytes())
    assert pictures[0] == pictures[1]
