"""Rollups: per node (and, packed in its row, per GPU), 1-minute and 1-hour aggregates of
the stored samples.

Two steps, both in the writer's task:

* **stage** (in :meth:`~collector.store.db.Store.write_batch`, the batch's transaction):
  the samples the insert reports as new (``ON CONFLICT DO NOTHING RETURNING``) become one
  :class:`~collector.store.partials.Staged` (columns, little work: the arithmetic waits for
  the fold), kept in memory and written as one row of ``rollup_stage`` (:data:`STAGE_SQL`).
  A duplicate (the same ``(node, ts_ms)``, the samples table's key) is not new, so it adds
  nothing.
* **fold** (:meth:`~collector.store.db.Store.rollup_fold`, every minute or so, or once
  100,000 samples wait; :mod:`collector.store.fold`), a shard of the stage at a time (the
  samples of a fixed part of the nodes): its staged samples become partial aggregates per
  bucket (numpy, in a worker thread: the minutes from the samples, the hours from the
  minutes, :func:`collector.store.partials.buckets`), the buckets already stored under
  those keys are read and merged in (:func:`collector.store.partials.merge`), written back
  (:data:`UPSERT_SQL`), their hours marked for the usage ledger and the shard's folded
  ``rollup_stage`` rows deleted: one short transaction per shard.

So every sample counts exactly once whatever happens between the two, or between two
shards of a fold (a crash leaves the staged rows not folded yet, which the next store reads
back at open and folds), a late sample lands in the
bucket of its own time stamp, and the merge is order-independent. A batch costs one row to
stage (a row per shard present); a fold writes one row per node and bucket it touched,
whatever the sample rate.

A bucket keeps sums and counts (a mean is ``sum / n``), minimum and maximum. Its GPUs are
one blob (``gpu_stats``, :data:`collector.store.partials.GPU_COLUMNS`), not a row each.

Energy: a sample's GPU energy is its GPUs' power (:func:`collector.nodefacts.gpu_power_w`:
the interval power, which the agent derives from the energy counter's delta over exactly
that interval and leaves unset across a counter reset or the first reading; else the
instantaneous reading) times its interval; the CPU's is the RAPL package power times the
interval; the node's, where it reports its input power (BMC/PSUs), that power times the
interval, with the seconds it covered (``node_s``). So every sample's energy is its own: no
state between samples, nothing counted twice when a late sample arrives between two others.

Busy GPU-seconds use the busy threshold in force when the sample is stored
(``governance.busy_util_pct``).

One writer: each part of a fold reads and rewrites its buckets in one transaction of the
only connection that writes them. The SQL is portable (``ON CONFLICT``, row values); on a store
several collectors write, a fold first takes an advisory lock for its transaction
(PostgreSQL), so the folds run one after another: a row lock (``FOR UPDATE``) would not
cover a bucket that two folds both find missing and both insert. The DDL is migrations
``0017``, ``0019``, ``0021``, ``0024`` and ``0025``. Several collectors may write one PostgreSQL
store (a share group): each stages under its own name (``rollup_stage.owner``) and reads
back and folds its own staged rows, so a sample is folded by the collector that stored it,
once; or, if that one stopped folding (gone for good), by the collector that takes its rows
over (:mod:`collector.store.fold`).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

from collector.nodefacts import DEFAULT_BUSY_UTIL_PCT, GpuPower, gpu_power_w
from collector.store.dialect import Dialect, growing_side
from collector.store.partials import (
    F64,
    FOLDED,
    GPU_COLUMNS,
    GPU_RECORD_BYTES,
    I64,
    MIN,
    NODE_COLUMNS,
    NODES_PER_SHARD,
    SUM,
    decode_gpus,
)
from collector.store.query import Query, single

__all__ = [
    "ADOPT_SQL",
    "CLAIM_STAGE_SQL",
    "FOLDED_SQL",
    "FOREIGN_SQL",
    "FORGET_SQL",
    "HOUR",
    "KNOWN_NODES_SQL",
    "LOST_STAGE_SQL",
    "MARK_HOURS_SQL",
    "MINUTE",
    "OWNED_SQL",
    "RESOLUTIONS",
    "RETENTION_SQL",
    "SEEN_SQL",
    "SHARDS_SQL",
    "STAGED_SQL",
    "STAGE_SQL",
    "TAKEOVER_FOLDS",
    "UPSERT_SQL",
    "GpuReading",
    "RollupConfig",
    "bucket_samples",
    "clear_stage_sql",
    "gpu_points",
    "gpu_records",
    "gpu_series",
    "node_series",
    "orphans_sql",
    "pack_gpus",
    "pack_readings",
    "rollup_rows",
    "stored_sql",
]

MINUTE: Final = 60
HOUR: Final = 3600
RESOLUTIONS: Final = (MINUTE, HOUR)

_PACKED: Final = 5
"""Values per GPU in :func:`pack_gpus`: index, utilisation, power, temperature, memory."""
_NAN: Final = math.nan


TAKEOVER_FOLDS: Final = 10
"""A collector that has not folded for this many fold intervals has its staged rows taken
over by the next collector that folds (:attr:`RollupConfig.takeover_after_s`)."""


@dataclass(frozen=True, slots=True)
class RollupConfig:
    """How the writer rolls samples up: the busy threshold, and whether at all."""

    busy_util_pct: float = DEFAULT_BUSY_UTIL_PCT
    enabled: bool = True
    takeover_after_s: float = TAKEOVER_FOLDS * 60.0
    """A fold takes over (folds, and counts) the staged rows of another collector of the
    store whose last fold or start is older than this: a share group's member that never
    came back, or a collector whose MQTT client id changed. Each collector dates its folds
    by its own clock: the members' clocks must agree to well within this (NTP)."""
    stage_shards: int = 128
    """Shards a batch's new samples are staged in at most, by ranges of node names
    (:class:`~collector.store.partials.NodeRanges`), a fold writing one shard per transaction
    (:mod:`collector.store.fold`); one: a fold in one transaction. The ``[rollups]
    fold_shards`` setting says what more shards cost and buy (measured)."""
    shard_nodes: int = NODES_PER_SHARD
    """Fewest nodes in one of those shards (fewer nodes: fewer shards)."""


class GpuReading(GpuPower, Protocol):
    """What :func:`pack_gpus` reads of a GPU: a :class:`~shared.schema.GpuSample`, or a
    struct that decodes only these (a read of stored payloads)."""

    @property
    def index(self) -> int: ...
    @property
    def util_pct(self) -> float | None: ...
    @property
    def temp_c(self) -> float | None: ...
    @property
    def mem_used_bytes(self) -> int | None: ...


def pack_gpus(gpus: Sequence[GpuReading]) -> bytes:
    """One sample's GPUs as the rollups read them: five float32 per GPU (index, utilisation
    %, power W as :func:`~collector.nodefacts.gpu_power_w` picks it, temperature C, memory
    used bytes; NaN for unreported), what the rollups' GPU records keep, little-endian. Bytes,
    not a list of tuples: a queued row then holds no objects the garbage collector tracks;
    and the bytes the staging joins as they are. Packed by one :class:`struct.Struct` per
    GPU count (1.6 us for 8 GPUs vs 2.8 us extending an ``array``); the schema bounds every
    value well inside float32's range, which ``struct`` checks. (The validator packs the
    readings of its one pass over the GPUs, :func:`pack_readings`.)"""
    flat: list[float] = []
    add = flat.extend
    for g in gpus:
        u, w, t, m = g.util_pct, gpu_power_w(g), g.temp_c, g.mem_used_bytes
        add(
            (
                g.index,
                _NAN if u is None else u,
                _NAN if w is None else w,
                _NAN if t is None else t,
                _NAN if m is None else float(m),
            )
        )
    return _gpu_struct(len(gpus)).pack(*flat)


def pack_readings(readings: Sequence[float]) -> bytes:
    """GPUs' readings as :func:`pack_gpus` packs them, taken from
    :attr:`collector.nodefacts.GpuFacts.readings` (the validator's one pass over a sample's
    GPUs; a test holds the two to the same bytes)."""
    return _gpu_struct(len(readings) // _PACKED).pack(*readings)


@functools.cache
def _gpu_struct(gpus: int) -> struct.Struct:
    """The little-endian layout of ``gpus`` GPUs' packed values (:func:`pack_gpus`)."""
    return struct.Struct(f"<{_PACKED * gpus}f")


STAGE_SQL: Final = ("INSERT INTO rollup_stage (owner, seq, shard, body)", 4, "")
"""One batch's new samples of one shard (:meth:`collector.store.partials.Staged.split`,
:meth:`~collector.store.partials.Staged.encode`), in the batch's transaction, under its
collector's name (the owner) and the batch's number among them: a row per shard present."""
CLAIM_STAGE_SQL: Final = "UPDATE rollup_stage SET owner = ? WHERE owner = ''"
"""Rows staged before stages had owners: the first collector to open the store takes them
(one statement, so two collectors starting at once do not both)."""
STAGED_SQL: Final = "SELECT seq, shard, body FROM rollup_stage WHERE owner = ? ORDER BY seq"
KNOWN_NODES_SQL: Final = "SELECT node FROM nodes"
"""The nodes a store knows: the first ranges of a stage's shards (:class:`~collector.store.
partials.NodeRanges`)."""
OWNED_SQL: Final = "SELECT seq FROM rollup_stage WHERE owner = ? AND shard = ?"
"""The numbers of a shard's batches a collector still owns when it folds that shard
(another may have taken over the others)."""
SHARDS_SQL: Final = "SELECT DISTINCT shard FROM rollup_stage WHERE owner = ?"
"""The shards a collector has rows in, when a fold begins: a lost attempt's rows (below)
may sit in a shard no batch it knows is staged in (the ranges built again since)."""
LOST_STAGE_SQL: Final = "SELECT body FROM rollup_stage WHERE owner = ? AND shard = ? AND seq = ?"
"""A row of this owner's shard that its stage does not know (an attempt committed whose
reply was lost: :meth:`collector.store.fold.Stage.rows`)."""


def clear_stage_sql(n: int) -> str:
    """A fold's part deletes the ``n`` numbered rows of its own collector's shard that it
    folded (owner, shard, then the numbers), never another's (several collectors write one
    PostgreSQL store: each folds what it staged) nor a batch staged since."""
    return (
        f"DELETE FROM rollup_stage WHERE owner = ? AND shard = ? AND seq IN ({', '.join('?' * n)})"
    )


ADOPT_SQL: Final = "UPDATE rollup_stage SET owner = ?, seq = seq + ? WHERE owner = ?"
"""A takeover: another collector's rows become the folding one's, renumbered after its
own (new owner, the offset, old owner)."""
FOLDED_SQL: Final = (
    "INSERT INTO rollup_owners (owner, folded) VALUES (?, ?) "
    "ON CONFLICT (owner) DO UPDATE SET folded = excluded.folded"
)
"""A collector's fold (or start), in that transaction: it is alive, its rows are its own."""
SEEN_SQL: Final = (
    "INSERT INTO rollup_owners (owner, folded) SELECT DISTINCT owner, ? FROM rollup_stage "
    "WHERE owner <> '' ON CONFLICT (owner) DO NOTHING"
)
"""Owners with staged rows and no fold recorded (staged before this version) count from
the first fold that sees them (the WHERE also settles SQLite's ``SELECT ... ON`` parse)."""


def orphans_sql(dialect: Dialect) -> str:
    """Other collectors with staged rows whose last fold is older than the cutoff."""
    return (
        "SELECT o.owner FROM rollup_owners o WHERE o.owner <> ? AND o.folded < ? "
        "AND EXISTS (SELECT 1 FROM rollup_stage s "
        f"WHERE s.owner = {growing_side(dialect, 'o.owner')}) ORDER BY o.owner"
    )


FORGET_SQL: Final = "DELETE FROM rollup_owners WHERE owner = ?"
"""An owner whose rows were taken over: back, it starts anew (it records its start)."""
FOREIGN_SQL: Final = "SELECT 1 FROM rollup_stage WHERE owner <> ? LIMIT 1"
"""Whether any other collector has rows staged (a fold with nothing of its own looks)."""

_KEY: Final = ("node", "res", "bucket")
_COLUMNS: Final = (*_KEY, *(c for c, _ in NODE_COLUMNS), "gpu_stats")


def _merged(col: str, op: int) -> str:
    if col in FOLDED:  # merged by the fold, which read them first
        return f"{col} = excluded.{col}"
    if op == SUM:
        return f"{col} = rollups.{col} + excluded.{col}"
    cmp = "<" if op == MIN else ">"
    return (
        f"{col} = CASE WHEN rollups.{col} IS NULL OR excluded.{col} {cmp} rollups.{col} "
        f"THEN excluded.{col} ELSE rollups.{col} END"
    )


UPSERT_SQL: Final = (
    f"INSERT INTO rollups ({', '.join(_COLUMNS)})",
    len(_COLUMNS),
    " ON CONFLICT (node, res, bucket) DO UPDATE SET "
    + ", ".join(_merged(c, op) for c, op in NODE_COLUMNS)
    + ", gpu_stats = excluded.gpu_stats",
)
"""New partial buckets (:meth:`collector.store.partials.Buckets.rows`) into the stored
ones: the node's columns merge here (sums add, minima and maxima compare: ``CASE``, not
SQLite's scalar ``min``/``max``), except its sums over time
(:data:`~collector.store.partials.FOLDED`) and its packed GPUs, which the fold merged (and
held to the bucket's length), having read them first (:func:`stored_sql`) in its
transaction."""
MARK_HOURS_SQL: Final = (
    "INSERT INTO ledger_dirty (hour, n)",
    2,
    " ON CONFLICT (hour) DO UPDATE SET n = ledger_dirty.n + excluded.n",
)
"""The hours a fold moved, for the usage ledger (:mod:`collector.store.ledger`)."""


_STORED: Final = ", ".join(
    [
        "r.gpu_stats",
        *(f"coalesce(r.{c}, -1)" for c in FOLDED[:2]),
        *(f"r.{c}" for c in FOLDED[2:]),
    ]
)
"""``reported_s`` and ``longest_s`` NULL (a bucket written before they were kept) read as
-1: all numbers."""


def stored_sql(keys: int) -> str:
    """The packed GPUs and sums over time of the stored buckets of ``keys`` (node, res,
    bucket) triples, as :func:`collector.store.partials.merge` reads them."""
    values = ", ".join(["(?, ?, ?)"] * keys)
    # A join, not `(node, res, bucket) IN (VALUES ...)`: SQLite scans the whole table for
    # that one, and looks each key up through the primary key for this.
    return (
        f"WITH k (node, res, bucket) AS (VALUES {values}) "
        f"SELECT r.node, r.res, r.bucket, {_STORED} FROM k JOIN rollups r "
        "ON r.node = k.node AND r.res = k.res AND r.bucket = k.bucket"
    )


RETENTION_SQL: Final = (
    "DELETE FROM rollups WHERE (node, res, bucket) IN (SELECT node, res, bucket FROM rollups "
    "WHERE res = ? AND bucket < ? ORDER BY bucket LIMIT ?)"
)
"""One chunk of a resolution's buckets older than a cutoff (res, cutoff, limit)."""


# -- reads --------------------------------------------------------------------------------


def _node_point(r: Any) -> dict[str, Any]:
    """One bucket as a point of a series (the columns :mod:`collector.store.series` names)."""
    secs = r["seconds"] or 0.0
    return {
        "t": float(r["bucket"]),
        "samples": r["samples"],
        "cpu_pct": None,
        "mem_pct": None,
        "gpu_util_pct": r["util_sum"] / r["util_n"] if r["util_n"] else None,
        "gpu_util_min_pct": r["util_min"],
        "gpu_util_max_pct": r["util_max"],
        "gpu_power_w": r["power_sum"] / r["power_n"] if r["power_n"] else None,
        "gpu_power_max_w": r["power_max"],
        "gpu_temp_max_c": r["temp_max"],
        "gpu_mem_used_bytes": r["mem_sum"] / r["mem_n"] if r["mem_n"] else None,
        "cpu_power_w": r["cpu_sum"] / r["cpu_n"] if r["cpu_n"] else None,
        "gpu_energy_j": r["gpu_energy_j"],
        "cpu_energy_j": r["cpu_energy_j"],
        "busy_gpu_s": r["busy_gpu_s"],
        "gpu_count": r["gpus"],
        "seconds": secs,
    }


def _starting_in(lo: float, hi: float) -> tuple[int, int]:
    """The whole-second bounds of the buckets starting in [``lo``, ``hi``): a bucket
    begins on a whole second, so ``lo <= bucket < hi`` is ``ceil(lo) <= bucket < ceil(hi)``
    (the store compares integers). ``floor(lo)`` took in the bucket that began up to a
    second before ``lo``, and so a boundary that fell in a bucket's first second counted
    that bucket as inside, one a second later as outside; :func:`rollups_before` is the
    same rule for "begins before"."""
    return math.ceil(lo), math.ceil(hi)


def node_series(node: str, res: int, since: float, until: float) -> Query[list[dict[str, Any]]]:
    """``node``'s buckets of resolution ``res`` starting in [since, until), oldest first,
    through the primary key."""
    return single(
        "SELECT bucket, samples, seconds, gpus, busy_gpu_s, util_n, util_sum, util_min, "
        "util_max, power_n, power_sum, power_max, temp_max, mem_n, mem_sum, gpu_energy_j, "
        "cpu_n, cpu_sum, cpu_energy_j FROM rollups WHERE node = ? AND res = ? "
        "AND bucket >= ? AND bucket < ? ORDER BY bucket",
        (node, res, *_starting_in(since, until)),
        lambda rows: [_node_point(r) for r in rows],
    )


def fleet_series(
    res: int, since: float, until: float, step: int, nodes: Sequence[str] | None = None
) -> Query[list[dict[str, Any]]]:
    """The fleet (or ``nodes``) per ``step`` seconds from buckets of resolution ``res``:
    mean GPU utilisation and CPU/GPU power summed over the nodes (mean per node x nodes)."""
    where = ""
    params: tuple[str, ...] = ()
    if nodes is not None:
        where = f" AND node IN ({', '.join('?' * len(nodes))})"
        params = tuple(nodes)
    return single(
        # The step computed once, in a subquery: PostgreSQL does not take GROUP BY on an
        # expression whose parameter is another placeholder than the select list's.
        "SELECT b * ? AS t, sum(util_sum) / NULLIF(sum(util_n), 0) AS gpu_util_pct, "
        "sum(power_sum) / NULLIF(sum(samples), 0) * count(DISTINCT node) AS gpu_power_w, "
        "sum(cpu_sum) / NULLIF(sum(samples), 0) * count(DISTINCT node) AS cpu_power_w, "
        "count(DISTINCT node) AS nodes FROM (SELECT bucket / ? AS b, node, util_sum, util_n, "
        "power_sum, samples, cpu_sum FROM rollups WHERE res = ? AND bucket >= ? "
        f"AND bucket < ?{where}) AS r GROUP BY b ORDER BY 1",
        (step, step, res, *_starting_in(since, until), *params),
        lambda rows: [{**dict(r), "cpu_pct": None, "mem_pct": None} for r in rows],
    )


def gpu_records(node: str, res: int, since: float, until: float) -> Query[tuple[I64, F64]]:
    """``node``'s per-GPU records of resolution ``res`` in [since, until), oldest first:
    each record's bucket start, and the records (:data:`~.partials.GPU_COLUMNS`)."""

    def build(rows: list[Any]) -> tuple[I64, F64]:
        blobs = [r[1] or b"" for r in rows]
        per = np.fromiter((len(b) // GPU_RECORD_BYTES for b in blobs), np.int64, len(blobs))
        starts = np.fromiter((int(r[0]) for r in rows), np.int64, len(rows))
        return np.repeat(starts, per), decode_gpus(b"".join(blobs))

    return single(
        "SELECT bucket, gpu_stats FROM rollups WHERE node = ? AND res = ? AND bucket >= ? "
        "AND bucket < ? ORDER BY bucket",
        (node, res, *_starting_in(since, until)),
        build,
    )


def bucket_samples(node: str, res: int, since: float, until: float) -> Query[dict[int, int]]:
    """``node``'s buckets of resolution ``res`` starting in [since, until): bucket start ->
    the samples folded into it (what a read compares with the raw samples' count to tell
    a bucket folded from one still waiting for its fold)."""
    return single(
        "SELECT bucket, samples FROM rollups WHERE node = ? AND res = ? AND bucket >= ? "
        "AND bucket < ?",
        (node, res, *_starting_in(since, until)),
        lambda rows: {int(r[0]): int(r[1]) for r in rows},
    )


_GPU_POINT: Final = (
    ("util_pct", "util"),
    ("util_min_pct", "util_min"),
    ("util_max_pct", "util_max"),
    ("power_w", "power"),
    ("power_min_w", "power_min"),
    ("power_max_w", "power_max"),
    ("temp_c", "temp"),
    ("temp_max_c", "temp_max"),
    ("mem_used_bytes", "mem"),
    ("mem_used_max_bytes", "mem_max"),
)
"""A point's values (after its time, GPU and samples; then its energy): a mean where the
column is a count's (``util`` -> ``util_sum / util_n``), else the column itself."""


def gpu_points(times: I64, records: F64) -> list[dict[str, Any]]:
    """GPU records (:data:`~.partials.GPU_COLUMNS`, each at its start in ``times``) as points
    of a series: counts, means, minima and maxima, energy (``None``: nothing reported).
    Column by column in numpy, then one dict a point: a day of 8 GPUs' minutes is 11,520."""
    col = {c: i for i, (c, _) in enumerate(GPU_COLUMNS)}
    g = records.T
    counts = {what: g[col[f"{what}_n"]] for what in ("util", "power", "temp", "mem")}
    values: list[list[float | None]] = []
    for _, what in _GPU_POINT:
        if what in counts:
            n = counts[what]
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(n > 0, g[col[f"{what}_sum"]] / n, _NAN)
        else:
            v = g[col[what]]
        values.append([None if x != x else x for x in v.tolist()])  # noqa: PLR0124 (NaN)
    samples = np.maximum.reduce(list(counts.values())) if len(records) else np.zeros(0)
    keys = ("t", "gpu", "samples", *(k for k, _ in _GPU_POINT), "energy_j")
    return [
        dict(zip(keys, row, strict=True))
        for row in zip(
            times.astype(np.float64).tolist(),
            g[0].astype(np.int64).tolist(),
            samples.astype(np.int64).tolist(),
            *values,
            g[col["energy_j"]].tolist(),
            strict=True,
        )
    ]


def gpu_series(node: str, res: int, since: float, until: float) -> Query[list[dict[str, Any]]]:
    """``node``'s per-GPU buckets of resolution ``res`` in [since, until), oldest first."""
    q = gpu_records(node, res, since, until)
    return Query(q.statements, lambda results: gpu_points(*q.build(results)))


def hour_rows(since: float, until: float) -> Query[list[Any]]:
    """Every node's 1-hour buckets in [since, until): what the usage ledger is made of."""
    return single(
        "SELECT node, bucket, seconds, gpus, gpu_s, util_gpu_s, busy_gpu_s, gpu_energy_j, "
        "cpu_energy_j, power_sum, power_n, cpu_sum, cpu_n, samples, node_s, node_energy_j "
        "FROM rollups "
        "WHERE res = ? AND bucket >= ? AND bucket < ? ORDER BY bucket, node",
        (HOUR, *_starting_in(since, until)),
        list,
    )


def oldest_raw(node: str | None) -> Query[float | None]:
    """When the raw samples begin (Unix seconds; ``None``: none stored): ``node``'s oldest
    time stamp through the ``(node, ts_ms)`` index, or the fleet's oldest arrival through
    ``samples (received_ms)`` (retention deletes by arrival)."""
    sql = "SELECT min(received_ms) FROM samples"
    params: tuple[str, ...] = ()
    if node is not None:
        sql, params = "SELECT min(ts_ms) FROM samples WHERE node = ?", (node,)
    return single(
        sql,
        params,
        lambda rows: None if not rows or rows[0][0] is None else rows[0][0] / 1000.0,
    )


def rollups_before(node: str, until: float) -> Query[bool]:
    """Whether ``node`` has 1-hour rollups beginning before ``until`` (history the raw
    samples no longer hold)."""
    return single(
        "SELECT 1 FROM rollups WHERE node = ? AND res = ? AND bucket < ? LIMIT 1",
        (node, HOUR, math.ceil(until)),  # begins before until: the whole seconds < until
        bool,
    )


def rollups_within(node: str | None, res: int, lo: float, hi: float) -> Query[bool]:
    """Whether ``node`` (``None``: any node) has a ``res`` bucket beginning in ``[lo, hi)``."""
    sql = "SELECT 1 FROM rollups WHERE res = ? AND bucket >= ? AND bucket < ?"
    params: tuple[str | int, ...] = (res, *_starting_in(lo, hi))
    if node is not None:
        sql, params = sql + " AND node = ?", (*params, node)
    return single(sql + " LIMIT 1", params, bool)


def rollup_rows() -> Query[dict[str, int]]:
    """Rows per resolution (for the benchmark's bytes per node-day)."""
    return single(
        "SELECT res, count(*) FROM rollups GROUP BY res",
        (),
        lambda rows: {f"rollups_{r[0]}": int(r[1]) for r in rows},
    )
