"""``collector query --since/--step`` and ``plot usage`` beyond the raw samples: rollups
before the raw retention, raw within it, each point saying its source."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.cli import main
from collector.ingest.validate import sample_row
from collector.nodefacts import gpu_power_w
from collector.paths import StoreTarget
from collector.store.db import Store
from collector.store.rollups import RollupConfig
from shared.schema import Sample, encode
from tests.helpers import collector_json

NODE = "x1000c0s0b0n0"
DAYS = 3


@pytest.fixture(autouse=True)
def _no_capwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os  # noqa: PLC0415

    for key in list(os.environ):
        if key.startswith("CAPWATCH_"):
            monkeypatch.delenv(key)


UNFOLDED_S: Final = 5400
""":func:`_three_days`' last samples stored after its fold (staged, not yet folded)."""


async def _three_days(
    db: StoreTarget, seed: int, *, unfolded_s: float = 0.0
) -> tuple[list[Sample], list[Sample]]:
    """One 2-GPU node sampled every 10 minutes for three days (GPU 1 at 90 % throughout,
    so the two GPUs differ), through the store's write path; raw samples kept for the last
    day only (the retention job deleted the rest), rollups for all but the samples of the
    last ``unfolded_s`` and one late sample 12 h back, stored after the fold (staged,
    their fold still to come). Returns the samples sent (the late one last), and those staged."""
    now = time.time()
    sim = FleetSimulator(1, gpus_per_node=2, seed=seed, interval_s=600)
    start = (now - DAYS * 86_400) // 3600 * 3600 + 3600
    samples = []
    t, k = start, 0
    while t < now - 60:
        s = sim.sample(0, t, k)
        gpus = (s.gpus[0], msgspec.structs.replace(s.gpus[1], util_pct=90.0))
        samples.append(msgspec.structs.replace(s, gpus=gpus))
        t += 600
        k += 1
    late: list[Sample] = []
    if unfolded_s:
        late = [s for s in samples if s.ts >= now - unfolded_s]
        twelve = next(s for s in samples if s.ts >= now - 12 * 3600)
        late.append(msgspec.structs.replace(twelve, ts=twelve.ts + 30, seq=10**6))
    async with Store(db, rollups=RollupConfig()) as store:
        await store.write_batch(
            [sample_row(s, encode(s), s.ts + 0.5) for s in samples if s not in late],
            new_nodes=[NODE],
        )
        await store.fold_rollups()
        await store.delete_older_than(round((now - 86_400) * 1000), 10_000)
        await store.write_batch([sample_row(s, encode(s), now) for s in late])
    return [*samples, *late[-1:]], late


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """:func:`_three_days` in a SQLite file."""
    path = tmp_path / "capwatch.db"
    await _three_days(path, seed=5)
    return path


def _json(*args: str) -> dict[str, Any]:
    result: dict[str, Any] = collector_json("query", *args)
    return result


def test_history_reads_rollups_before_the_raw_samples_and_says_so(db: Path) -> None:
    """Three days at 1h: 1-hour rollups for the first two, raw for the last; every
    point's source says which, and no step mixes them."""
    got = _json("--db", str(db), "--node", NODE, "--since", "3d", "--step", "1h")
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


def test_node_since_past_raw_uses_history_without_step(db: Path) -> None:
    """A node's --since reaching past its raw samples gives history (1h past two days)."""
    got = _json("--db", str(db), "--node", NODE, "--since", "3d")
    assert got["step_s"] == 3600
    assert got["sources"][0] == "1h"


def test_minute_steps_come_from_minute_rollups(db: Path) -> None:
    """A step under an hour reads the 1-minute rollups."""
    got = _json("--db", str(db), "--node", NODE, "--since", "2d", "--step", "30m")
    assert got["sources"] == ["1m", "raw"]
    assert {p["samples"] for p in got["points"]} <= {3, 2, 1}


def test_fleet_history_and_table_line(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --node: the fleet's; the table says its sources in its first line."""
    got = _json("--db", str(db), "--since", "3d", "--step", "6h")
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


GpuDb = tuple[StoreTarget, list[Sample], list[Sample]]


@pytest.fixture
async def gpu_db(store_url: StoreTarget) -> GpuDb:
    """:func:`_three_days` on each backend, its last samples staged, with the samples sent
    (the late one last) and those staged."""
    return store_url, *await _three_days(store_url, seed=6, unfolded_s=UNFOLDED_S)


def _expected(samples: list[Sample], t: float, step: int, gpu: int) -> tuple[float, float]:
    """GPU ``gpu``'s mean utilisation and energy (power x interval) over the step at ``t``;
    the energy held, as a bucket of the step is, where its samples claimed more time than
    the step or than the longest of their intervals (the late sample's hour)."""
    mine = [
        (g, s.interval_s) for s in samples if t <= s.ts < t + step for g in s.gpus if g.index == gpu
    ]
    utils = [g.util_pct for g, _ in mine if g.util_pct is not None]
    energy = sum((gpu_power_w(g) or 0.0) * dt for g, dt in mine)
    claimed = sum(dt for _, dt in mine)
    most = max(step, *(dt for _, dt in mine))
    return sum(utils) / len(utils), energy * min(1.0, most / claimed)


def _steps(staged: list[Sample], step: int) -> set[float]:
    """The steps holding the samples ``staged``."""
    return {float(s.ts // step * step) for s in staged}


def test_gpu_history_reads_rollups_and_raw_only_where_not_folded(gpu_db: GpuDb) -> None:
    """--gpus --since 3d --step 1h: a point per GPU and hour from the 1-hour rollups, raw
    samples read only for the hours holding samples not folded yet (the last ones, a late
    one), each point saying which; both give the GPU's own mean utilisation and energy of
    its samples in that hour, the late sample included."""
    db, samples, staged = gpu_db
    got = _json("--db", str(db), "--node", NODE, "--gpus", "--since", "3d", "--step", "1h")
    assert (got["node"], got["sources"], got["gpus"]) == (NODE, ["1h", "raw"], [0, 1])
    assert got["unreadable_samples"] == 0
    points = got["points"]
    raw = {p["t"] for p in points if p["source"] == "raw"}
    assert raw == _steps(staged, 3600)
    assert got["raw_from"] == min(raw)
    keys = [(p["t"], p["gpu"]) for p in points]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    late = samples[-1].ts // 3600 * 3600
    assert [p["samples"] for p in points if p["t"] == late] == [7, 7]  # six an hour, + late
    for p in points[2:-2]:
        util, energy = _expected(samples, p["t"], 3600, p["gpu"])
        assert p["util_pct"] == pytest.approx(util, rel=1e-5)
        assert p["energy_j"] == pytest.approx(energy, rel=1e-5)
        assert p["util_min_pct"] <= p["util_pct"] <= p["util_max_pct"]
    assert {p["util_pct"] for p in points if p["gpu"] == 1} == {90.0}
    assert all(p["util_pct"] < 90 for p in points if p["gpu"] == 0)


async def test_gpu_history_raw_steps_read_what_their_fold_makes(gpu_db: GpuDb) -> None:
    """The minutes read from raw samples (not folded yet) have, once folded, the same
    figures from the 1-minute rollups (the same arithmetic, float32 apart)."""
    db, _, staged = gpu_db
    args = ("--db", str(db), "--node", NODE, "--gpus", "--since", "1d", "--step", "1m")
    before = _json(*args)
    raw = [p for p in before["points"][2:] if p["source"] == "raw"]
    assert {p["t"] for p in raw} == _steps(staged, 60)
    async with Store(db, rollups=RollupConfig()) as store:  # takes the staged rows back
        assert await store.fold_rollups() == len(staged)
    after = {(p["t"], p["gpu"]): p for p in _json(*args)["points"]}
    assert {after[(p["t"], p["gpu"])]["source"] for p in raw} == {"1m"}
    for p in raw:
        folded = after[(p["t"], p["gpu"])]
        for key in ("samples", "util_pct", "util_max_pct", "power_w", "temp_max_c", "energy_j"):
            assert p[key] == pytest.approx(folded[key], rel=1e-5), key


async def test_gpu_history_with_rollups_off_reads_raw(store_url: StoreTarget) -> None:
    """A store whose collector runs with the rollups off: every step from raw samples."""
    now = time.time()
    sim = FleetSimulator(1, gpus_per_node=2, seed=3, interval_s=600)
    samples = [sim.sample(0, now - 600 * k, k) for k in range(36, 0, -1)]
    async with Store(store_url) as store:
        await store.write_batch([sample_row(s, encode(s), s.ts) for s in samples], [], [NODE])
    got = _json("--db", str(store_url), "--node", NODE, "--gpus", "--since", "6h", "--step", "1h")
    assert got["sources"] == ["raw"]
    for p in got["points"][2:-2]:
        util, energy = _expected(samples, p["t"], 3600, p["gpu"])
        assert (p["util_pct"], p["energy_j"]) == (pytest.approx(util), pytest.approx(energy))


@pytest.mark.parametrize("rollups", [False, True])
async def test_history_counts_every_raw_sample_no_rollup_holds(
    store_url: StoreTarget, rollups: bool
) -> None:
    """Two hours of samples, rollups off (or on, not folded yet: a new store's first
    minute): every sample is in one step of the node's and the fleet's history at 1h and
    10m. Raw began at the first step boundary after the oldest sample, whose step came from
    rollups that held nothing: `--step 1h` on a store begun at 16:35 started at 17:00,
    and with rollups off the oldest step was missing for good (GPU history showed it)."""
    now = time.time()
    sim = FleetSimulator(1, gpus_per_node=2, seed=4, interval_s=300)
    samples = [sim.sample(0, now - 300 * k - 7, 24 - k) for k in range(24, 0, -1)]
    async with Store(store_url, rollups=RollupConfig() if rollups else None) as store:
        await store.write_batch([sample_row(s, encode(s), s.ts) for s in samples], [], [NODE])
    for step in ("1h", "10m"):
        for node in (("--node", NODE), ()):
            got = _json("--db", str(store_url), *node, "--since", "3h", "--step", step)
            assert got["sources"] == ["raw"]
            assert sum(p["samples"] for p in got["points"]) == len(samples), (step, node)


@pytest.mark.parametrize("offset_s", [0.5, 1.5])
async def test_a_node_query_shows_what_retention_left_in_the_oldest_samples_bucket(
    store_url: StoreTarget, offset_s: float
) -> None:
    """The oldest raw sample ``offset_s`` into an hour, the one before it (in the same
    minute) deleted by retention and held by the rollups alone: `--node --since` shows the
    history, every sample in one step, whatever the offset. rollups_before floored its
    bound where rollups_within ceils it: at 0.5 s the hour's bucket (beginning before the
    oldest sample) was not "before" it, the query listed the raw samples, and the deleted
    sample was counted nowhere; at 1.5 s it was."""
    hour = time.time() // 3600 * 3600 - 3600
    sim = FleetSimulator(1, gpus_per_node=2, seed=6, interval_s=600)
    stamps = (hour + offset_s - 0.3, hour + offset_s, hour + 600)
    samples = [sim.sample(0, t, k) for k, t in enumerate(stamps)]
    async with Store(store_url, rollups=RollupConfig()) as store:
        rows = [sample_row(s, encode(s), hour + 1 + 700 * k) for k, s in enumerate(samples)]
        await store.write_batch(rows, new_nodes=[NODE])
        await store.fold_rollups()
        await store.delete_older_than(round((hour + 100) * 1000), 10_000)  # the first only
    got = _json("--db", str(store_url), "--node", NODE, "--since", "3h")
    assert "points" in got, sorted(got)
    assert got["sources"] == ["1m", "raw"]
    assert sum(p["samples"] for p in got["points"]) == len(samples)


def test_gpu_history_minute_steps_and_the_table(
    gpu_db: GpuDb, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step under an hour reads the 1-minute rollups; the table names the GPUs and its
    sources in its first line, then a row per step and GPU."""
    db, _, _ = gpu_db
    got = _json("--db", str(db), "--node", NODE, "--gpus", "--since", "2d", "--step", "30m")
    assert got["sources"] == ["1m", "raw"]
    assert {p["samples"] for p in got["points"]} <= {4, 3, 2, 1}  # 4: the late sample's
    args = ["query", "--db", str(db), "--node", NODE, "--gpus", "--since", "2d", "--step", "6h"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        f"node {NODE} GPUs 0-1, step 6h: 1-hour rollups then raw samples (raw from "
    )
    assert lines[1].split()[:5] == ["TIME", "(UTC)", "SOURCE", "GPU", "SAMPLES"]
    assert len(lines) - 2 == 2 * len({line[:16] for line in lines[2:]})  # two GPUs a step
    points = _json(*args[1:])["points"]
    # ENERGY in kWh: 3.6 MJ each (shared.units), as the usage ledger counts them.
    kwh = [f"{p['energy_j'] / 3.6e6:.3f} kWh" for p in points]
    assert [line.rsplit(maxsplit=2)[-2:] for line in lines[2:]] == [k.split() for k in kwh]


def test_gpu_history_needs_a_node(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--gpus --since without --node: one line naming --node, exit 2."""
    assert main(["query", "--db", str(db), "--gpus", "--since", "1d"]) == 2
    assert "--node" in capsys.readouterr().err
