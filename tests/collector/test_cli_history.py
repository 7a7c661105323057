"""``collector query --since/--step`` and ``plot usage`` beyond the raw samples: rollups
before the raw retention, raw within it, each point saying its source."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.simulate import FleetSimulator
from collector.cli import main
from collector.ingest.validate import sample_row
from collector.store.db import Store
from collector.store.rollups import RollupConfig
from shared.schema import encode

NODE = "x1000c0s0b0n0"
DAYS = 3


@pytest.fixture(autouse=True)
def _no_capwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415

    for key in list(os.environ):
        if key.startswith("CAPWATCH_"):
            monkeypatch.delenv(key)


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """One 2-GPU node sampled every 10 minutes for three days; raw samples kept for the
    last day only (the retention job deleted the rest), rollups for all."""
    path = tmp_path / "capwatch.db"
    now = time.time()
    sim = FleetSimulator(1, gpus_per_node=2, seed=5, interval_s=600)
    start = (now - DAYS * 86_400) // 3600 * 3600 + 3600
    rows = []
    t, k = start, 0
    while t < now - 60:
        s = sim.sample(0, t, k)
        rows.append(sample_row(s, encode(s), t + 0.5))
        t += 600
        k += 1
    async with Store(path, rollups=RollupConfig()) as store:
        await store.write_batch(rows, new_nodes=[NODE])
        await store.fold_rollups()
        await store.delete_older_than(round((now - 86_400) * 1000), 10_000)
    return path


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["query", "--json", *args]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_history_reads_rollups_before_the_raw_samples_and_says_so(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three days at 1h: 1-hour rollups for the first two, raw for the last; every
    point's source says which, and no step mixes them."""
    got = _json(capsys, "--db", str(db), "--node", NODE, "--since", "3d", "--step", "1h")
    assert got["sources"] == ["1h", "raw"]
    points = got["points"]
    raw_from = got["raw_from"]
    assert {p["source"] for p in points if p["t"] < raw_from} == {"1h"}
    assert {p["source"] for p in points if p["t"] >= raw_from} == {"raw"}
    ts = [p["t"] for p in points]
    assert ts == sorted(ts)
    assert len(set(ts)) == len(ts)
    assert all(p["samples"] == 6 for p in points[1:-1])  # every 10 min: six an hour
    assert time.time() - raw_from == pytest.approx(86_400, abs=3 * 3600)
    hourly = [p for p in points if p["source"] == "1h"]
    assert all(p["gpu_util_pct"] is not None for p in hourly)


def test_node_since_past_raw_uses_history_without_step(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node's --since reaching past its raw samples gives history (1h past two days)."""
    got = _json(capsys, "--db", str(db), "--node", NODE, "--since", "3d")
    assert got["step_s"] == 3600
    assert got["sources"][0] == "1h"


def test_minute_steps_come_from_minute_rollups(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step under an hour reads the 1-minute rollups."""
    got = _json(capsys, "--db", str(db), "--node", NODE, "--since", "2d", "--step", "30m")
    assert got["sources"] == ["1m", "raw"]
    assert {p["samples"] for p in got["points"]} <= {3, 2, 1}


def test_fleet_history_and_table_line(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --node: the fleet's; the table says its sources in its first line."""
    got = _json(capsys, "--db", str(db), "--since", "3d", "--step", "6h")
    assert got["node"] is None
    assert got["sources"] == ["1h", "raw"]
    assert main(["query", "--db", str(db), "--since", "3d", "--step", "6h"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("fleet, step 6h: 1-hour rollups then raw samples (raw from ")


@pytest.mark.parametrize("step", ["90s", "30s", "1h30m"])
def test_bad_step_is_one_line(db: Path, step: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A step the rollups cannot serve is refused, naming the flag."""
    assert main(["query", "--db", str(db), "--step", step]) == 2
    assert "--step" in capsys.readouterr().err


def test_plot_usage_over_a_month_draws_from_rollups(db: Path, tmp_path: Path) -> None:
    """plot usage --since 30d draws (rollups before the raw samples)."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "month.png"
    assert main(["plot", "usage", "--db", str(db), "--since", "30d", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
