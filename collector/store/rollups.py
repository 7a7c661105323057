"""Rollups: per node and per GPU, 1-minute and 1-hour aggregates of the stored samples.

Two steps, both in the writer's task, each one transaction:

* **stage** (:func:`pending_rows`, in :meth:`~collector.store.db.Store.write_batch`): the
  samples the insert reports as new (``ON CONFLICT DO NOTHING RETURNING``) are appended to
  ``rollup_pending`` (one row per sample) and ``rollup_pending_gpu`` (one per GPU), in the
  batch's own transaction. A duplicate (the same ``(node, ts_ms)``, the samples table's key)
  is not new, so it adds nothing.
* **fold** (:data:`FOLD_SQL`, :meth:`~collector.store.db.Store.fold_rollups`, every few
  seconds): the staged rows are aggregated per bucket by SQL, merged into the rollups
  (``ON CONFLICT ... DO UPDATE``: counts and sums add, minima and maxima compare), the
  hours they touched are marked for the usage ledger, and the staged rows are deleted.

So every sample counts exactly once whatever happens between the two (a crash leaves the
staged rows for the next fold), a late sample lands in the bucket of its own time stamp, and
the merge is order-independent. Appending is cheap (no conflict to look up), and the fold
aggregates a few seconds of samples in SQLite's own code, so a sample costs a few
microseconds, not an upsert per GPU and resolution.

A bucket keeps sums and counts (a mean is ``sum / n``), minimum and maximum.

Energy: a sample's GPU energy is its GPUs' power (:func:`collector.nodefacts.gpu_power_w`:
the interval power, which the agent derives from the energy counter's delta over exactly
that interval and leaves unset across a counter reset or the first reading; else the
instantaneous reading) times its interval; the CPU's is the RAPL package power times the
interval. So every sample's energy is its own: no state between samples, nothing counted
twice when a late sample arrives between two others.

Busy GPU-seconds use the busy threshold in force when the sample is stored
(``governance.busy_util_pct``).

The SQL here is portable (``ON CONFLICT``, ``CASE`` instead of SQLite's scalar
``min``/``max``, ``WHERE true`` before ``ON CONFLICT`` in ``INSERT ... SELECT``); the DDL is
migration ``0014``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from collector.store.query import Query, single

if TYPE_CHECKING:
    from shared.schema import GpuSample

__all__ = [
    "FOLD_SQL",
    "HOUR",
    "MINUTE",
    "PENDING_GPU_SQL",
    "PENDING_SQL",
    "RESOLUTIONS",
    "RollupConfig",
    "gpu_series",
    "node_series",
    "pack_gpus",
    "pending_rows",
    "rollup_rows",
]

MINUTE: Final = 60
HOUR: Final = 3600
RESOLUTIONS: Final = (MINUTE, HOUR)

_PACKED: Final = 5
"""Values per GPU in :func:`pack_gpus`: index, utilisation, power, temperature, memory."""
_NAN: Final = math.nan


@dataclass(frozen=True, slots=True)
class RollupConfig:
    """How the writer rolls samples up: the busy threshold, and whether at all."""

    busy_util_pct: float = 10.0
    enabled: bool = True


def pack_gpus(gpus: Sequence[GpuSample]) -> bytes:
    """One sample's GPUs as the rollups read them: five doubles per GPU (index, utilisation %,
    power W as :func:`~collector.nodefacts.gpu_power_w` picks it, temperature C, memory used
    bytes; NaN for unreported). Bytes, not a list of tuples: a queued row then holds no
    objects the garbage collector tracks."""
    from collector.nodefacts import gpu_power_w  # noqa: PLC0415 (the schema's import)

    values = array("d")
    for g in gpus:
        w = gpu_power_w(g)
        values.extend(
            (
                g.index,
                _NAN if g.util_pct is None else g.util_pct,
                _NAN if w is None else w,
                _NAN if g.temp_c is None else g.temp_c,
                _NAN if g.mem_used_bytes is None else float(g.mem_used_bytes),
            )
        )
    return values.tobytes()


PENDING_SQL: Final = (
    "INSERT INTO rollup_pending "
    "(node, ts_ms, interval_s, gpus, util, busy, power, temp_max, mem, cpu)",
    10,
    "",
)
PENDING_GPU_SQL: Final = (
    "INSERT INTO rollup_pending_gpu (node, ts_ms, interval_s, gpu, util, power, temp, mem)",
    8,
    "",
)


def pending_rows(
    rows: Iterable[Any], busy_util_pct: float
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The staged rows of new sample rows (:class:`~collector.store.db.SampleRow`):
    ``(node rows, GPU rows)`` for :data:`PENDING_SQL` and :data:`PENDING_GPU_SQL`."""
    nodes: list[tuple[Any, ...]] = []
    gpus: list[tuple[Any, ...]] = []
    add_gpu = gpus.append
    for r in rows:
        node, ts, dt = r.node, r.ts_ms, r.interval_s
        busy = 0
        temp_max: float | None = None
        stats = r.gpu_stats
        if stats:
            packed = array("d")
            packed.frombytes(stats)
            it = iter(packed.tolist())
            for idx, u, w, t, m in zip(it, it, it, it, it, strict=True):
                # NaN (not reported) is stored as NULL; x == x is False only for NaN.
                if u == u and u >= busy_util_pct:  # noqa: PLR0124
                    busy += 1
                if t == t and (temp_max is None or t > temp_max):  # noqa: PLR0124
                    temp_max = t
                add_gpu(
                    (
                        node,
                        ts,
                        dt,
                        int(idx),
                        u if u == u else None,  # noqa: PLR0124
                        w if w == w else None,  # noqa: PLR0124
                        t if t == t else None,  # noqa: PLR0124
                        m if m == m else None,  # noqa: PLR0124
                    )
                )
        nodes.append(
            (
                node,
                ts,
                dt,
                r.gpu_count,
                r.gpu_util_pct,
                busy,
                r.gpu_power_w,
                temp_max,
                r.gpu_mem_used_bytes,
                r.cpu_power_w,
            )
        )
    return nodes, gpus


_SUM, _MIN, _MAX = 0, 1, 2

# Rollup column -> (how two buckets merge, its aggregate over staged rows).
_NODE: Final = (
    ("samples", _SUM, "count(*)"),
    ("seconds", _SUM, "sum(interval_s)"),
    ("gpus", _MAX, "max(gpus)"),
    ("gpu_s", _SUM, "sum(gpus * interval_s)"),
    ("util_gpu_s", _SUM, "coalesce(sum(gpus * util / 100.0 * interval_s), 0)"),
    ("busy_gpu_s", _SUM, "sum(busy * interval_s)"),
    ("util_n", _SUM, "count(util)"),
    ("util_sum", _SUM, "coalesce(sum(util), 0)"),
    ("util_min", _MIN, "min(util)"),
    ("util_max", _MAX, "max(util)"),
    ("power_n", _SUM, "count(power)"),
    ("power_sum", _SUM, "coalesce(sum(power), 0)"),
    ("power_min", _MIN, "min(power)"),
    ("power_max", _MAX, "max(power)"),
    ("temp_max", _MAX, "max(temp_max)"),
    ("mem_n", _SUM, "count(mem)"),
    ("mem_sum", _SUM, "coalesce(sum(mem), 0)"),
    ("mem_min", _MIN, "min(mem)"),
    ("mem_max", _MAX, "max(mem)"),
    ("gpu_energy_j", _SUM, "coalesce(sum(power * interval_s), 0)"),
    ("cpu_n", _SUM, "count(cpu)"),
    ("cpu_sum", _SUM, "coalesce(sum(cpu), 0)"),
    ("cpu_min", _MIN, "min(cpu)"),
    ("cpu_max", _MAX, "max(cpu)"),
    ("cpu_energy_j", _SUM, "coalesce(sum(cpu * interval_s), 0)"),
)
_GPU: Final = (
    ("samples", _SUM, "count(*)"),
    ("seconds", _SUM, "sum(interval_s)"),
    ("util_n", _SUM, "count(util)"),
    ("util_sum", _SUM, "coalesce(sum(util), 0)"),
    ("util_min", _MIN, "min(util)"),
    ("util_max", _MAX, "max(util)"),
    ("power_n", _SUM, "count(power)"),
    ("power_sum", _SUM, "coalesce(sum(power), 0)"),
    ("power_min", _MIN, "min(power)"),
    ("power_max", _MAX, "max(power)"),
    ("temp_n", _SUM, "count(temp)"),
    ("temp_sum", _SUM, "coalesce(sum(temp), 0)"),
    ("temp_min", _MIN, "min(temp)"),
    ("temp_max", _MAX, "max(temp)"),
    ("mem_n", _SUM, "count(mem)"),
    ("mem_sum", _SUM, "coalesce(sum(mem), 0)"),
    ("mem_min", _MIN, "min(mem)"),
    ("mem_max", _MAX, "max(mem)"),
    ("energy_j", _SUM, "coalesce(sum(power * interval_s), 0)"),
)


def _set(table: str, col: str, op: int) -> str:
    if op == _SUM:
        return f"{col} = {table}.{col} + excluded.{col}"
    cmp = "<" if op == _MIN else ">"
    return (
        f"{col} = CASE WHEN {table}.{col} IS NULL OR excluded.{col} {cmp} {table}.{col} "
        f"THEN excluded.{col} ELSE {table}.{col} END"
    )


def _fold(gpu: bool, res: int) -> str:
    table, staged = ("gpu_rollups", "rollup_pending_gpu") if gpu else ("rollups", "rollup_pending")
    spec = _GPU if gpu else _NODE
    key = ("node", "res", "bucket", "gpu") if gpu else ("node", "res", "bucket")
    bucket = f"ts_ms / {res * 1000} * {res}"
    group = f"node, {bucket}" + (", gpu" if gpu else "")
    select_key = f"node, {res}, {bucket}" + (", gpu" if gpu else "")
    cols = (*key, *(c for c, _, _ in spec))
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select_key}, "
        + ", ".join(agg for _, _, agg in spec)
        + f" FROM {staged} WHERE true GROUP BY {group} ON CONFLICT ({', '.join(key)}) "
        + "DO UPDATE SET "
        + ", ".join(_set(table, c, op) for c, op, _ in spec)
    )


FOLD_SQL: Final = (
    *(_fold(gpu, res) for gpu in (False, True) for res in RESOLUTIONS),
    # The hours the staged samples touched, for the usage ledger (collector.store.ledger).
    "INSERT INTO ledger_dirty (hour, n) SELECT DISTINCT ts_ms / 3600000 * 3600, 1 "
    "FROM rollup_pending WHERE true ON CONFLICT (hour) DO UPDATE SET n = ledger_dirty.n + 1",
    "DELETE FROM rollup_pending",
    "DELETE FROM rollup_pending_gpu",
)
"""The fold, in order, in one transaction: staged rows into both resolutions' node and GPU
rollups, their hours marked for the ledger, then the staged rows gone."""


def retention_sql(gpu: bool) -> str:
    """One chunk of a resolution's buckets older than a cutoff (res, cutoff, limit)."""
    table = "gpu_rollups" if gpu else "rollups"
    key = "node, res, bucket, gpu" if gpu else "node, res, bucket"
    return (
        f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
        "WHERE res = ? AND bucket < ? ORDER BY bucket LIMIT ?)"
    )


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


def node_series(node: str, res: int, since: float, until: float) -> Query[list[dict[str, Any]]]:
    """``node``'s buckets of resolution ``res`` starting in [since, until), oldest first,
    through the primary key."""
    return single(
        "SELECT bucket, samples, seconds, gpus, busy_gpu_s, util_n, util_sum, util_min, "
        "util_max, power_n, power_sum, power_max, temp_max, mem_n, mem_sum, gpu_energy_j, "
        "cpu_n, cpu_sum, cpu_energy_j FROM rollups WHERE node = ? AND res = ? "
        "AND bucket >= ? AND bucket < ? ORDER BY bucket",
        (node, res, math.floor(since), math.ceil(until)),
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
        (step, step, res, math.floor(since), math.ceil(until), *params),
        lambda rows: [{**dict(r), "cpu_pct": None, "mem_pct": None} for r in rows],
    )


def gpu_series(node: str, res: int, since: float, until: float) -> Query[list[dict[str, Any]]]:
    """``node``'s per-GPU buckets of resolution ``res`` in [since, until), oldest first."""

    def build(rows: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "t": float(r["bucket"]),
                "gpu": r["gpu"],
                "samples": r["samples"],
                "util_pct": r["util_sum"] / r["util_n"] if r["util_n"] else None,
                "util_min_pct": r["util_min"],
                "util_max_pct": r["util_max"],
                "power_w": r["power_sum"] / r["power_n"] if r["power_n"] else None,
                "power_min_w": r["power_min"],
                "power_max_w": r["power_max"],
                "temp_c": r["temp_sum"] / r["temp_n"] if r["temp_n"] else None,
                "temp_max_c": r["temp_max"],
                "mem_used_bytes": r["mem_sum"] / r["mem_n"] if r["mem_n"] else None,
                "mem_used_max_bytes": r["mem_max"],
                "energy_j": r["energy_j"],
            }
            for r in rows
        ]

    return single(
        "SELECT bucket, gpu, samples, util_n, util_sum, util_min, util_max, power_n, "
        "power_sum, power_min, power_max, temp_n, temp_sum, temp_max, mem_n, mem_sum, "
        "mem_max, energy_j FROM gpu_rollups WHERE node = ? AND res = ? AND bucket >= ? "
        "AND bucket < ? ORDER BY bucket, gpu",
        (node, res, math.floor(since), math.ceil(until)),
        build,
    )


def hour_rows(since: float, until: float) -> Query[list[Any]]:
    """Every node's 1-hour buckets in [since, until): what the usage ledger is made of."""
    return single(
        "SELECT node, bucket, seconds, gpus, gpu_s, util_gpu_s, busy_gpu_s, gpu_energy_j, "
        "cpu_energy_j, power_sum, power_n, cpu_sum, cpu_n, samples FROM rollups "
        "WHERE res = ? AND bucket >= ? AND bucket < ? ORDER BY bucket, node",
        (HOUR, math.floor(since), math.ceil(until)),
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
        (node, HOUR, math.floor(until)),
        bool,
    )


def rollup_rows() -> Query[dict[str, int]]:
    """Rows per table and resolution (for the benchmark's bytes per node-day)."""
    return single(
        "SELECT 'rollups' AS t, res, count(*) FROM rollups GROUP BY res "
        "UNION ALL SELECT 'gpu_rollups', res, count(*) FROM gpu_rollups GROUP BY res",
        (),
        lambda rows: {f"{r[0]}_{r[1]}": int(r[2]) for r in rows},
    )
