"""A node that reports more time than a bucket spans is held to the bucket's length: its
rollups, the usage ledger made of them, and an honest node's buckets beside it."""

from __future__ import annotations

import asyncio
import random

import pytest
from structlog.testing import capture_logs

from collector.counters import value
from collector.governance.ledger import LedgerJob
from collector.ingest.validate import Ingestor, sample_row
from collector.ingest.writer import Writer
from collector.live import LiveView
from collector.paths import StoreTarget
from collector.store.db import SampleRow, Store
from collector.store.governance import governance
from collector.store.partials import decode_gpus
from collector.store.rollups import HOUR, MINUTE, RollupConfig
from shared.clock import FakeClock
from shared.schema import CpuStats, GpuSample, MemStats, Sample, encode
from tests.helpers import db_rows

T0 = 1_800_000_000.0 - 1_800_000_000 % 3600  # an hour's start
GPUS = 8
GPU_W = 700.0
NODE_W = 100_000.0  # the schema's most


def _row(node: str, ts: float, interval_s: float, *, gpus: int = GPUS) -> SampleRow:
    s = Sample(
        v=1,
        node=node,
        ts=ts,
        seq=round(ts * 10),
        interval_s=interval_s,
        cpu=CpuStats(count=8, pct=10.0),
        mem=MemStats(total_bytes=10, used_bytes=5, available_bytes=5),
        cpu_power_w=200.0,
        node_power_w=NODE_W,
        node_power_source="dcmi",
        gpus=tuple(
            GpuSample(
                index=i,
                uuid=f"GPU-00000000-0000-0000-0000-00000000000{i}",
                util_pct=100.0,
                power_w=GPU_W,
                power_interval_w=GPU_W,
                temp_c=60.0,
                mem_used_bytes=1_000,
            )
            for i in range(gpus)
        ),
    )
    return sample_row(s, encode(s), ts + 0.1)


def _flood(node: str = "flood") -> list[SampleRow]:
    """The probe's flood: 150 samples in 15 s, each claiming an hour."""
    return [_row(node, T0 + 600 + 0.1 * k, 3600.0) for k in range(150)]


async def _fold(db: StoreTarget, *batches: list[SampleRow]) -> None:
    async with Store(db, rollups=RollupConfig()) as store:
        for rows in batches:
            await store.write_batch(rows)
            await store.fold_rollups()


_TIMED = "seconds, gpu_s, util_gpu_s, busy_gpu_s, gpu_energy_j, cpu_energy_j, node_s, node_energy_j"


def _bucket(db: StoreTarget, node: str, res: int) -> dict[str, float]:
    ((*values, blob),) = db_rows(
        db,
        f"SELECT {_TIMED}, reported_s, gpu_stats FROM rollups WHERE node = ? AND res = ?",
        (node, res),
    )
    names = [*_TIMED.split(", "), "reported_s"]
    out = dict(zip(names, map(float, values), strict=True))
    out["gpu_energy_max_j"] = float(decode_gpus(blob)[:, -1].max())
    return out


def _at_most(value: float, bound: float) -> None:
    assert value <= bound * (1 + 1e-9), (value, bound)


@pytest.mark.parametrize("res", [MINUTE, HOUR])
async def test_a_flooding_node_is_held_to_each_buckets_length(
    store_url: StoreTarget, res: int
) -> None:
    """150 samples in 15 s claiming an hour each fill a bucket no more than the node at its
    reported power for the bucket's length, or for the longest interval one sample claimed
    where that is longer (an hour, in the minute), whatever the batches and folds they
    arrive in; what it reported stays visible (``reported_s``)."""
    flood = _flood()
    random.Random(3).shuffle(flood)
    await _fold(store_url, flood[:40], flood[40:41], flood[41:])
    b = _bucket(store_url, "flood", res)
    assert b["reported_s"] == pytest.approx(150 * 3600.0)
    res = max(res, 3600)  # the bound: one sample's interval where longer than the bucket
    assert b["seconds"] == pytest.approx(res)
    _at_most(b["seconds"], res)
    _at_most(b["node_s"], res)
    _at_most(b["node_energy_j"], NODE_W * res)
    _at_most(b["gpu_s"], GPUS * res)
    _at_most(b["busy_gpu_s"], GPUS * res)
    _at_most(b["util_gpu_s"], GPUS * res)
    _at_most(b["gpu_energy_j"], GPUS * GPU_W * res)
    _at_most(b["cpu_energy_j"], 200.0 * res)
    _at_most(b["gpu_energy_max_j"], GPU_W * res * (1 + 1e-6))  # float32 records
    assert b["node_energy_j"] == pytest.approx(NODE_W * res)  # held to, not emptied


async def test_a_bucket_capped_in_parts_is_what_it_is_capped_at_once(
    store_url: StoreTarget,
) -> None:
    """The cap does not depend on the order or the folds the samples come in: a node
    that floods an hour, then reports honestly in it, holds the same as folded at once."""

    def rows(node: str) -> tuple[list[SampleRow], list[SampleRow]]:
        honest = [_row(node, T0 + 5 * k, 5.0) for k in range(1, 60)]  # its first 5 min
        return _flood(node), honest

    flood, honest = rows("once")
    await _fold(store_url, flood + honest)
    flood, honest = rows("parts")
    await _fold(store_url, honest[:10], flood[:75], honest[10:], flood[75:])
    once, parts = (
        db_rows(store_url, f"SELECT {_TIMED} FROM rollups WHERE res = ? AND node = ?", (HOUR, n))
        for n in ("once", "parts")
    )
    assert parts == [pytest.approx(once[0], rel=1e-12)]


async def test_the_ledger_counts_a_flooding_node_at_most_its_gpus_for_the_hour(
    store_url: StoreTarget,
) -> None:
    """The usage ledger, made of the hours, credits the flooding node at most its GPUs x
    1 h and its input power x 1 h, whatever it claimed; the fold named it, once."""
    with capture_logs() as logs:
        await _fold(store_url, _flood())
    (held,) = [e for e in logs if e["event"] == "rollup_buckets_held"]
    assert (held["buckets"], held["reported_s"]) == (2, {"flood": 540_000})
    async with Store.open_readonly(store_url) as reads:
        gov = await reads.run(governance())
        clock = FakeClock(start_wall=T0 + 2 * HOUR)
        job = LedgerJob(clock, governance=lambda: gov, retention_s=30 * 86_400.0)
        record = await job(reads, LiveView())
    assert record is not None
    async with Store(store_url) as store:
        while await record.write(store):
            pass
    ((busy, used, reported, node_kwh, basis),) = db_rows(
        store_url,
        "SELECT busy_gpu_h, used_gpu_h, reported_gpu_h, node_kwh, node_kwh_basis "
        "FROM usage_ledger WHERE node = 'flood'",
    )
    _at_most(busy, GPUS)
    _at_most(used, GPUS)
    _at_most(reported, GPUS)
    assert reported == pytest.approx(GPUS)
    assert (node_kwh, basis) == (pytest.approx(NODE_W / 1000), "measured")


def _honest_day() -> list[SampleRow]:
    """A day of an honest 2-GPU node sampling every 5 s +/- 0.5 s, each sample's interval
    the time since the one before."""
    rng = random.Random(11)
    rows, t = [], T0
    while t < T0 + 86_400 - 6:
        dt = 5.0 + rng.uniform(-0.5, 0.5)
        t += dt
        rows.append(_row("honest", t, dt, gpus=2))
    return rows


async def test_an_honest_node_keeps_its_hours_within_one_interval(
    store_url: StoreTarget,
) -> None:
    """An honest 5 s node with jitter over a day: each hour holds the seconds its samples
    reported, held to 3600 where they reach past it (the part of the hour's first interval
    that lies in the hour before): the day loses under 0.05 % of its time and energy."""
    rows = _honest_day()
    await _fold(store_url, rows[: len(rows) // 2], rows[len(rows) // 2 :])
    reported: dict[int, float] = {}
    for r in rows:
        hour = r.ts_ms // 3_600_000 * 3600
        reported[hour] = reported.get(hour, 0.0) + r.interval_s
    hours = db_rows(
        store_url,
        "SELECT bucket, seconds, reported_s, node_energy_j FROM rollups "
        f"WHERE node = 'honest' AND res = {HOUR} ORDER BY bucket",
    )
    assert len(hours) == 24
    for bucket, seconds, rep, energy in hours:
        assert rep == pytest.approx(reported[bucket])
        assert seconds == pytest.approx(min(reported[bucket], 3600.0))
        assert energy == pytest.approx(NODE_W * seconds)
        assert reported[bucket] - seconds < 6.0  # one interval at most
    truth = sum(r.interval_s for r in rows)
    held = sum(h[1] for h in hours)
    assert 0 <= truth - held < 0.0005 * truth


async def test_a_bucket_written_before_reported_s_merges_as_reported(
    store_url: StoreTarget,
) -> None:
    """A bucket stored before ``reported_s`` was kept (NULL: never held) merges as its
    ``seconds`` reported: a flood folded into it is held as into any other."""
    for node in ("old", "new"):
        await _fold(store_url, [_row(node, T0 + 5 * k, 5.0) for k in range(1, 60)])
    async with Store(store_url) as store, store.transaction("as the previous version"):
        await store.execute("UPDATE rollups SET reported_s = NULL WHERE node = 'old'")
    await _fold(store_url, _flood("old") + _flood("new"))
    old, new = (
        db_rows(
            store_url,
            f"SELECT reported_s, {_TIMED} FROM rollups WHERE node = ? AND res = ?",
            (n, HOUR),
        )
        for n in ("old", "new")
    )
    assert old == [pytest.approx(r, rel=1e-12) for r in new]
    assert old[0][:2] == (pytest.approx(59 * 5.0 + 150 * 3600.0), 3600.0)


async def test_a_node_sampling_slower_than_a_bucket_keeps_each_samples_time(
    store_url: StoreTarget,
) -> None:
    """A node sampling every 20 minutes: each sample's 20 minutes count in the minute of its
    stamp, whole (the bucket may hold the longest interval one of its samples reported),
    and its hour holds the three samples' hour; nothing held."""
    rows = [_row("slow", T0 + 1200 * k + 30, 1200.0) for k in range(3)]
    await _fold(store_url, rows)
    minutes = db_rows(
        store_url,
        "SELECT seconds, node_energy_j FROM rollups WHERE node = ? AND res = ?",
        ("slow", MINUTE),
    )
    assert minutes == [(pytest.approx(1200.0), pytest.approx(NODE_W * 1200))] * 3
    hour = _bucket(store_url, "slow", HOUR)
    assert hour["seconds"] == pytest.approx(3600.0)
    assert hour["node_energy_j"] == pytest.approx(NODE_W * 3600)


async def test_the_writer_counts_the_buckets_it_held_for_an_over_reporting_node(
    store_url: StoreTarget,
) -> None:
    """``rollup_buckets_over_reported`` on /metrics: the flood's minute and hour (its
    samples reported far more than any honest node can), not an honest node's jitter."""
    honest = [_row("honest", T0 + 600 + 5 * k + (k % 3) * 0.4, 5.0) for k in range(40)]
    async with Store(store_url, rollups=RollupConfig()) as store:
        clock = FakeClock(start_wall=T0 + 2 * HOUR)
        writer = Writer(store, asyncio.Queue(), Ingestor(clock), clock)
        await store.write_batch(honest)
        await writer.fold_rollups()
        assert value(writer.metrics.rollups_over_reported) == 0
        await store.write_batch(_flood())
        await writer.fold_rollups()
        assert value(writer.metrics.rollups_over_reported) == 2


@pytest.mark.parametrize("order", ["short_first", "long_first", "together"])
async def test_a_long_interval_arriving_after_a_held_minute_merges_as_if_together(
    store_url: StoreTarget, order: str
) -> None:
    """A minute of 20 samples of 5 s (100 s: held to 60) and a late sample of 1,200 s in
    it: whatever fold each comes in, the minute holds 1,200 s (the longest interval) of its
    1,300 s reported; the hour all 1,300 s."""
    short = [_row("mix", T0 + 600 + 2 * k, 5.0) for k in range(20)]
    long = [_row("mix", T0 + 641, 1200.0)]
    batches = {
        "short_first": (short, long),
        "long_first": (long, short),
        "together": (short + long,),
    }[order]
    await _fold(store_url, *batches)
    for res, held in ((MINUTE, 1200.0), (HOUR, 1300.0)):
        b = _bucket(store_url, "mix", res)
        assert b["reported_s"] == pytest.approx(1300.0)
        assert b["seconds"] == pytest.approx(held)
        assert b["node_energy_j"] == pytest.approx(NODE_W * held)
        assert b["gpu_energy_max_j"] == pytest.approx(GPU_W * held, rel=1e-6)


async def test_a_slow_nodes_minute_from_before_the_hold_keeps_its_time_after_a_late_sample(
    store_url: StoreTarget,
) -> None:
    """A minute written before ``reported_s`` and ``longest_s`` were kept (both NULL), of a
    node sampling every 20 minutes, then a late 5 s sample in it: the minute keeps the old
    sample's 20 minutes (its seconds read as one sample's interval, at most the schema's
    longest), as if both had been folded since the upgrade; the flood test above still
    holds an old bucket."""
    stamp = T0 + 1230
    await _fold(store_url, [_row("slow", stamp, 1200.0)])
    async with Store(store_url) as store, store.transaction("as the previous version"):
        await store.execute(
            "UPDATE rollups SET reported_s = NULL, longest_s = NULL WHERE node = 'slow'"
        )
    await _fold(store_url, [_row("slow", stamp + 10, 5.0)])
    ((seconds, reported),) = db_rows(
        store_url,
        "SELECT seconds, reported_s FROM rollups WHERE node = ? AND res = ?",
        ("slow", MINUTE),
    )
    assert seconds == pytest.approx(1200.0)
    assert reported == pytest.approx(1205.0)
