"""Time series for ``collector plot`` and ``collector query``: one node's samples, or the
fleet in time buckets; and :func:`history` (a node's or the fleet's) and
:func:`gpu_history` (a node's GPUs'), raw samples where kept and rollups before.

Served by indexes: ``samples (node, ts_ms)`` for a node, ``samples (received_ms)`` for the
fleet (by arrival time, which the collector's clock sets); ``rollups`` by its primary key
for a node, by ``(res, bucket)`` for the fleet.

A GPU's raw steps read the samples' stored payloads (only their GPUs are decoded) and
aggregate them as the rollups' fold does (:func:`collector.store.partials.gpu_minutes`,
then per step :func:`~collector.store.partials.gpu_steps`), so a raw step and a rolled-up
one mean the same: counts, means, minima, maxima, energy of the GPU's power x interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from collector.store import rollups
from collector.store.dialect import Dialect, growing_side
from collector.store.partials import F64, GPU_COLUMNS, I64, gpu_minutes, gpu_steps
from collector.store.reader import StoreReader
from collector.store.rollups import HOUR, MINUTE

__all__ = [
    "fleet_series",
    "fleet_series_sql",
    "gpu_history",
    "history",
    "known_node",
    "node_series",
]


def known_node(reader: StoreReader, node: str) -> bool:
    """Whether the collector has ever heard of ``node`` (a row in ``nodes``)."""
    return bool(reader.fetchall("SELECT 1 FROM nodes WHERE node = ?", (node,)))


def node_series(reader: StoreReader, node: str, since: float) -> list[dict[str, Any]]:
    """``node``'s samples since ``since`` (node clock), oldest first: time, CPU %, memory %,
    GPU utilisation %, GPU power W, CPU power W."""
    rows = reader.fetchall(
        "SELECT ts_ms / 1000.0 AS t, cpu_pct, "
        "100.0 * mem_used_bytes / NULLIF(mem_total_bytes, 0) AS mem_pct, gpu_util_pct, "
        "gpu_power_w, cpu_power_w FROM samples WHERE node = ? AND ts_ms >= ? ORDER BY ts_ms",
        (node, round(since * 1000)),
    )
    return [dict(r) for r in rows]


def fleet_series(
    reader: StoreReader, since: float, bucket_s: float, *, pool: str | None = None
) -> list[dict[str, Any]]:
    """The fleet per bucket of arrival time since ``since``, oldest first: mean CPU %,
    memory %, GPU utilisation %, and power W (mean per sample times the nodes reporting).

    Buckets are ``bucket_s`` long at most, shorter (down to 1 s) when the data spans less,
    so a short window still has ~150 points. ``pool``: only that pool's nodes
    (``pool_nodes``; ``free``: the nodes in no pool)."""
    since_ms = round(since * 1000)
    span = reader.fetchall(
        "SELECT min(received_ms) AS lo, max(received_ms) AS hi FROM samples WHERE received_ms >= ?",
        (since_ms,),
    )[0]
    if span["lo"] is not None:  # buckets over the data, not over an empty window
        bucket_s = min(bucket_s, max((span["hi"] - span["lo"]) / 1000 / 150, 1.0))
    bucket_ms = max(1, round(bucket_s * 1000))
    # The bucket computed once, in a subquery: PostgreSQL does not take GROUP BY on an
    # expression whose parameter is another placeholder than the select list's.
    sql, extra = fleet_series_sql(reader.dialect, pool)
    rows = reader.fetchall(sql, (bucket_ms, bucket_ms, since_ms, *extra))
    return [dict(r) for r in rows]


def fleet_series_sql(dialect: Dialect, pool: str | None) -> tuple[str, tuple[str, ...]]:
    """:func:`fleet_series`' statement per bucket, and its parameters after the bucket's
    length (twice) and the window's start: ``pool``'s nodes only, or the nodes in no pool
    (``free``), or all (``None``). A pool's nodes are compared in ``samples.node``'s
    collation (:func:`~collector.store.dialect.growing_side`), so that each one's samples
    are looked up by ``samples (node, ts_ms)``, not the fleet's whole window read and
    filtered; ``free`` (``NOT IN``: a hashed list whatever the collation) reads the window."""
    member = growing_side(dialect, "node")
    in_pool = (
        "" if pool is None else f" AND node IN (SELECT {member} FROM pool_nodes WHERE pool = ?)"
    )
    extra: tuple[str, ...] = () if pool is None else (pool,)
    if pool == "free":  # collector.store.pools.FREE: the nodes in no pool
        in_pool, extra = " AND node NOT IN (SELECT node FROM pool_nodes)", ()
    sql = (
        "SELECT b * ? / 1000.0 AS t, avg(cpu_pct) AS cpu_pct, "
        "avg(100.0 * mem_used_bytes / NULLIF(mem_total_bytes, 0)) AS mem_pct, "
        "avg(gpu_util_pct) AS gpu_util_pct, "
        "avg(gpu_power_w) * count(DISTINCT node) AS gpu_power_w, "
        "avg(cpu_power_w) * count(DISTINCT node) AS cpu_power_w, count(DISTINCT node) AS nodes "
        "FROM (SELECT received_ms / ? AS b, node, cpu_pct, mem_used_bytes, mem_total_bytes, "
        "gpu_util_pct, gpu_power_w, cpu_power_w FROM samples WHERE received_ms >= ?"
        f"{in_pool}) AS s GROUP BY b ORDER BY 1"
    )
    return sql, extra


def _step_bucket(column: str, step_s: int) -> str:
    """SQL for the start (Unix s) of ``column``'s (ms) step."""
    return f"{column} / {step_s * 1000} * {step_s}"


def _raw_points(
    reader: StoreReader,
    node: str | None,
    *,
    since: float,
    until: float,
    step_s: int,
    nodes: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """Raw samples per step: a node's by time stamp, the fleet's by arrival."""
    lo, hi = round(since * 1000), round(until * 1000)
    if node is not None:
        rows = reader.fetchall(
            f"SELECT {_step_bucket('ts_ms', step_s)} AS t, count(*) AS samples, "
            "avg(cpu_pct) AS cpu_pct, "
            "avg(100.0 * mem_used_bytes / NULLIF(mem_total_bytes, 0)) AS mem_pct, "
            "avg(gpu_util_pct) AS gpu_util_pct, avg(gpu_power_w) AS gpu_power_w, "
            "avg(cpu_power_w) AS cpu_power_w, avg(gpu_mem_used_bytes) AS gpu_mem_used_bytes "
            "FROM samples WHERE node = ? AND ts_ms >= ? AND ts_ms < ? GROUP BY 1 ORDER BY 1",
            (node, lo, hi),
        )
    else:
        where, extra = "", tuple[str, ...]()
        if nodes is not None:
            where = f" AND node IN ({', '.join('?' * len(nodes))})"
            extra = tuple(nodes)
        rows = reader.fetchall(
            f"SELECT {_step_bucket('received_ms', step_s)} AS t, count(*) AS samples, "
            "avg(cpu_pct) AS cpu_pct, "
            "avg(100.0 * mem_used_bytes / NULLIF(mem_total_bytes, 0)) AS mem_pct, "
            "avg(gpu_util_pct) AS gpu_util_pct, "
            "avg(gpu_power_w) * count(DISTINCT node) AS gpu_power_w, "
            "avg(cpu_power_w) * count(DISTINCT node) AS cpu_power_w, "
            "count(DISTINCT node) AS nodes FROM samples WHERE received_ms >= ? "
            f"AND received_ms < ?{where} GROUP BY 1 ORDER BY 1",
            (lo, hi, *extra),
        )
    return [{**dict(r), "t": float(r["t"]), "source": "raw"} for r in rows]


def _resolution(step_s: int) -> tuple[int, str]:
    """The rollups a step reads, and the source it says: 1-hour buckets for steps of an
    hour or more, else 1-minute."""
    return (HOUR, "1h") if step_s >= HOUR else (MINUTE, "1m")


def _rollup_points(
    reader: StoreReader,
    node: str | None,
    *,
    since: float,
    until: float,
    step_s: int,
    nodes: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """Rollup buckets per step (:func:`_resolution`)."""
    res, source = _resolution(step_s)
    if node is None:
        points = reader.run(rollups.fleet_series(res, since, until, step_s, nodes))
        return [{**p, "t": float(p["t"]), "source": source} for p in points]
    buckets = reader.run(rollups.node_series(node, res, since, until))
    out: dict[int, dict[str, Any]] = {}
    for b in buckets:
        t = int(b["t"]) // step_s * step_s
        acc = out.setdefault(t, {"t": float(t), "samples": 0, "source": source, "_w": []})
        acc["samples"] += b["samples"]
        acc["_w"].append(b)
    points = []
    for acc in out.values():
        parts = acc.pop("_w")
        n = sum(p["samples"] for p in parts) or 1

        def mean(key: str, parts: list[dict[str, Any]] = parts, n: int = n) -> float | None:
            known = [(p[key], p["samples"]) for p in parts if p[key] is not None]
            if not known:
                return None
            return float(sum(v * w for v, w in known) / sum(w for _, w in known))

        acc.update(
            cpu_pct=None,
            mem_pct=None,
            gpu_util_pct=mean("gpu_util_pct"),
            gpu_power_w=mean("gpu_power_w"),
            cpu_power_w=mean("cpu_power_w"),
            gpu_mem_used_bytes=mean("gpu_mem_used_bytes"),
            gpu_util_max_pct=max(
                (p["gpu_util_max_pct"] for p in parts if p["gpu_util_max_pct"] is not None),
                default=None,
            ),
            gpu_energy_j=sum(p["gpu_energy_j"] for p in parts),
            cpu_energy_j=sum(p["cpu_energy_j"] for p in parts),
        )
        points.append(acc)
    return points


def history(
    reader: StoreReader,
    since: float,
    until: float,
    step_s: int,
    *,
    node: str | None = None,
    nodes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``node``'s (or the fleet's, or ``nodes``') history in steps of ``step_s`` (a whole
    number of minutes, or of hours from an hour): raw samples where the store still has
    them, rollups before (1-hour buckets for steps of an hour or more, else 1-minute), each
    point saying its ``source`` (``raw``, ``1m``, ``1h``). Raw begins at the first step
    boundary after the oldest stored sample (the node's by time stamp, the fleet's by
    arrival), so no step mixes the two."""
    split = _raw_from(reader, node, since, until, step_s)
    points: list[dict[str, Any]] = []
    if split > since and reader.has_table("rollups"):
        points += _rollup_points(
            reader, node, since=since, until=min(split, until), step_s=step_s, nodes=nodes
        )
    if split < until:
        points += _raw_points(reader, node, since=split, until=until, step_s=step_s, nodes=nodes)
    return _answer(since, until, step_s, split, points)


def _raw_from(
    reader: StoreReader, node: str | None, since: float, until: float, step: int
) -> float:
    """Where a history's raw steps begin: the first step boundary after the oldest stored
    sample (``until``: none stored), so no step mixes raw samples and rollups; the oldest
    sample's own step where no rollup holds any of it (rollups off, or not folded yet):
    read from neither, that step was missing (the first hour of a new store at 1h steps)."""
    oldest = reader.run(rollups.oldest_raw(node))
    if oldest is None:
        return until
    first = math.floor(oldest / step) * step
    res, _ = _resolution(step)
    if not reader.has_table("rollups") or not reader.run(
        rollups.rollups_within(node, res, first, first + step)
    ):
        return max(since, first)
    return max(since, math.ceil(oldest / step) * step)


def _answer(
    since: float, until: float, step_s: int, split: float, points: list[dict[str, Any]]
) -> dict[str, Any]:
    sources = sorted({p["source"] for p in points}, key=("1h", "1m", "raw").index)
    return {
        "since": since,
        "until": until,
        "step_s": step_s,
        "raw_from": split,
        "sources": sources,
        "points": points,
    }


class _Gpu(msgspec.Struct):
    """What a GPU history reads of a stored sample's GPU (:class:`rollups.GpuReading`):
    msgspec skips the rest of the payload (processes, MIG devices, ECC...), a third of the
    time a whole ``GpuSample`` takes to decode. Stored payloads were validated on arrival."""

    index: int
    util_pct: float | None = None
    power_w: float | None = None
    power_interval_w: float | None = None
    temp_c: float | None = None
    mem_used_bytes: int | None = None


class _Gpus(msgspec.Struct):
    gpus: list[_Gpu] = msgspec.field(default_factory=list)


def _raw_gpu_records(
    reader: StoreReader, node: str, since: float, until: float, res: int
) -> tuple[I64, F64, int]:
    """``node``'s GPUs' 1-minute records from its raw samples stamped in [since, until)
    (their energy held as a bucket of ``res`` is), and how many samples could not be read
    (a payload without GPUs of that shape)."""
    rows = reader.fetchall(
        "SELECT ts_ms, interval_s, payload, payload_dict FROM samples "
        "WHERE node = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms",
        (node, round(since * 1000), round(until * 1000)),
    )
    decode = msgspec.json.Decoder(_Gpus).decode
    stats: list[bytes] = []
    unreadable = 0
    for r in rows:
        try:
            gpus = decode(reader.payload(r[2], r[3])).gpus
        except msgspec.DecodeError:  # ValidationError too: a payload of another shape
            gpus, unreadable = [], unreadable + 1
        stats.append(rollups.pack_gpus(gpus))
    ts = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    intervals = np.fromiter((r[1] for r in rows), np.float64, len(rows))
    minutes, records = gpu_minutes(ts, intervals, stats, res)
    return minutes, records, unreadable


def _unfolded(
    reader: StoreReader, node: str, res: int, since: float, until: float
) -> list[tuple[float, float]]:
    """The spans of [since, until) a read takes from ``node``'s raw samples, the rollups
    of resolution ``res`` not holding them all: each bucket with more raw samples than
    were folded into it (staged, their fold still to come; or stored with the rollups
    off), and the part before the first whole bucket (whose rollup reaches before
    ``since``). Adjacent buckets joined: one read a span. Counted through the
    ``(node, ts_ms)`` index, no payload read; a bucket whose raw samples retention has
    partly deleted holds fewer than its rollup, which is then the one read."""
    first = math.ceil(since / res) * res
    spans = [(since, min(first, until))] if since < first else []
    if first >= until:
        return spans
    counts = reader.fetchall(
        f"SELECT ts_ms / {res * 1000} AS b, count(*) FROM samples WHERE node = ? "
        "AND ts_ms >= ? AND ts_ms < ? GROUP BY 1 ORDER BY 1",
        (node, first * 1000, round(until * 1000)),
    )
    folded = (
        reader.run(rollups.bucket_samples(node, res, first, until))
        if reader.has_table("rollups")
        else {}
    )
    for b, n in counts:
        t = int(b) * res
        if n <= folded.get(t, 0):
            continue
        if spans and spans[-1][1] == t:
            spans[-1] = (spans[-1][0], min(t + res, until))
        else:
            spans.append((t, min(t + res, until)))
    return spans


def _recent_gpu_records(
    reader: StoreReader, node: str, since: float, until: float, res: int
) -> tuple[I64, F64, I64, F64, int]:
    """``node``'s GPU records in [since, until), where its raw samples are kept: the
    rollups' (resolution ``res``) for the buckets folded, then the raw samples' (1-minute
    records) for the spans :func:`_unfolded` names, and the raw samples left unread."""
    spans = _unfolded(reader, node, res, since, until)
    times, records = np.zeros(0, np.int64), np.zeros((0, len(GPU_COLUMNS)))
    if reader.has_table("rollups"):
        first = math.ceil(since / res) * res  # the part before: raw (a span)
        times, records = reader.run(rollups.gpu_records(node, res, first, until))
        if spans:
            lo = np.array([a for a, _ in spans])
            hi = np.array([b for _, b in spans])
            at = np.searchsorted(lo, times, side="right") - 1
            keep = (at < 0) | (times >= hi[np.maximum(at, 0)])
            times, records = times[keep], records[keep]
    raw_times, raw_records, unreadable = [], [], 0
    for a, b in spans:
        t, r, n = _raw_gpu_records(reader, node, a, b, res)
        raw_times.append(t)
        raw_records.append(r)
        unreadable += n
    if not spans:
        return times, records, times[:0], records[:0], 0
    return times, records, np.concatenate(raw_times), np.concatenate(raw_records), unreadable


def gpu_history(
    reader: StoreReader, node: str, since: float, until: float, step_s: int
) -> dict[str, Any]:
    """``node``'s GPUs, each in steps of ``step_s`` over [since, until): per GPU and step,
    samples, mean/min/max utilisation and power, mean and hottest temperature, mean and
    most memory used, energy (J), each point saying its ``source``. Before the node's raw
    samples begin (:func:`_raw_from`), the rollups (1-hour buckets for steps of an hour or
    more, else 1-minute); after, the rollups too for the buckets already folded, and the
    raw samples only for those still waiting for their fold (:func:`_unfolded`: the last
    minute or two, a late sample's minute, or all of them with the rollups off): a step
    holding any of those says ``raw``. ``raw_from``: the first ``raw`` step (``until``:
    none); ``gpus``: the GPU indexes seen; ``unreadable_samples``: raw samples whose GPUs
    could not be read (left out)."""
    split = _raw_from(reader, node, since, until, step_s)
    res, source = _resolution(step_s)
    points: list[dict[str, Any]] = []
    if split > since and reader.has_table("rollups"):
        times, records = reader.run(rollups.gpu_records(node, res, since, min(split, until)))
        points += [
            {**p, "source": source} for p in rollups.gpu_points(*gpu_steps(times, records, step_s))
        ]
    unreadable = 0
    if split < until:
        times, records, raw_times, raw_records, unreadable = _recent_gpu_records(
            reader, node, split, until, res
        )
        raw_steps = set((raw_times // step_s * step_s).tolist())
        merged = gpu_steps(
            np.concatenate([times, raw_times]), np.concatenate([records, raw_records]), step_s
        )
        points += [
            {**p, "source": "raw" if int(p["t"]) in raw_steps else source}
            for p in rollups.gpu_points(*merged)
        ]
    raw_from = min((p["t"] for p in points if p["source"] == "raw"), default=until)
    return {
        **_answer(since, until, step_s, raw_from, points),
        "gpus": sorted({p["gpu"] for p in points}),
        "unreadable_samples": unreadable,
    }
