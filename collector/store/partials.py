"""Rollup arithmetic: new samples into partial aggregates per bucket, merged by key (numpy).

A *partial* is what a bucket holds of some of its samples: counts and sums add, minima and
maxima compare (NaN: nothing reported). A sample is a partial of one; a minute is the merge
of its samples' partials; an hour the merge of its minutes'; a bucket already stored merges
with new partials the same way. Merging is order-independent (up to float rounding), so a
late sample lands in its own bucket whatever was stored before it.

Everything here works on whole columns (a fold's samples at once), never sample by sample
in Python: a batch of new samples becomes a :class:`Staged` (a few arrays, built in one
pass over the rows), a fold's staged batches become :class:`Buckets` with :func:`buckets`,
and :func:`merge` folds stored buckets in.

Per-GPU statistics are packed into their node's bucket (:data:`GPU_COLUMNS`, float32, one
record of :data:`GPU_RECORD_BYTES` per GPU): one row per node and bucket instead of one per
GPU, a quarter of the bytes.

No SQL here: :mod:`collector.store.rollups` reads and writes the rows.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collector.store.db import SampleRow

__all__ = [
    "GPU_COLUMNS",
    "GPU_RECORD_BYTES",
    "MAX",
    "MIN",
    "NODE_COLUMNS",
    "SUM",
    "Buckets",
    "Staged",
    "buckets",
    "concat",
    "decode_gpus",
    "gpu_minutes",
    "gpu_steps",
    "merge",
    "stage",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

SUM, MIN, MAX = 0, 1, 2

NODE_COLUMNS: Final = (
    ("samples", SUM),
    ("seconds", SUM),
    ("gpus", MAX),
    ("gpu_s", SUM),
    ("util_gpu_s", SUM),
    ("busy_gpu_s", SUM),
    ("util_n", SUM),
    ("util_sum", SUM),
    ("util_min", MIN),
    ("util_max", MAX),
    ("power_n", SUM),
    ("power_sum", SUM),
    ("power_min", MIN),
    ("power_max", MAX),
    ("temp_max", MAX),
    ("mem_n", SUM),
    ("mem_sum", SUM),
    ("mem_min", MIN),
    ("mem_max", MAX),
    ("gpu_energy_j", SUM),
    ("cpu_n", SUM),
    ("cpu_sum", SUM),
    ("cpu_min", MIN),
    ("cpu_max", MAX),
    ("cpu_energy_j", SUM),
    ("node_n", SUM),
    ("node_sum", SUM),
    ("node_max", MAX),
    ("node_s", SUM),
    ("node_energy_j", SUM),
)
"""A node's bucket: the ``rollups`` columns after its key, and how two partials merge.
``node_*``: the node's input power (BMC/PSU) where it reported it; ``node_s`` the seconds
it covered, ``node_energy_j`` power x interval over them."""

GPU_COLUMNS: Final = (
    ("gpu", MAX),
    ("util_n", SUM),
    ("util_sum", SUM),
    ("util_min", MIN),
    ("util_max", MAX),
    ("power_n", SUM),
    ("power_sum", SUM),
    ("power_min", MIN),
    ("power_max", MAX),
    ("temp_n", SUM),
    ("temp_sum", SUM),
    ("temp_max", MAX),
    ("mem_n", SUM),
    ("mem_sum", SUM),
    ("mem_max", MAX),
    ("energy_j", SUM),
)
"""One GPU's record in its node's bucket (``rollups.gpu_stats``: little-endian float32,
these values in this order, GPUs by index). float32 holds a count exactly up to 2^24 and a
sum to ~7 digits: finer than the sensors. A GPU's samples are the most of its counts."""

GPU_RECORD_BYTES: Final = 4 * len(GPU_COLUMNS)
_GPU_DTYPE: Final = np.dtype("<f4")

_SAMPLE: Final = ("interval_s", "gpus", "util", "busy", "power", "temp_max", "mem", "cpu", "node_w")
"""A staged sample's values (:attr:`Staged.values`)."""
_PACKED: Final = 5
"""A staged GPU's values: index, utilisation %, power W, temperature C, memory bytes
(:func:`collector.store.rollups.pack_gpus`)."""
_STAGE_VERSION: Final = 1


def _ops(spec: Sequence[tuple[str, int]]) -> tuple[list[int], list[int], list[int]]:
    return tuple([i for i, (_, op) in enumerate(spec) if op == k] for k in (SUM, MIN, MAX))  # type: ignore[return-value]


_NODE_OPS: Final = _ops(NODE_COLUMNS)
_GPU_OPS: Final = _ops(GPU_COLUMNS)


@dataclass(slots=True)
class Staged:
    """New samples (one batch's, or a fold's), as columns."""

    nodes: list[str]
    ts_ms: I64
    values: F64
    """One row per sample: :data:`_SAMPLE`."""
    gpu_counts: I64
    gpus: F64
    """One row per GPU of each sample in turn (``gpu_counts`` of them): :data:`_PACKED`."""

    def __len__(self) -> int:
        return len(self.nodes)

    def encode(self) -> bytes:
        """The bytes staged in the store (read back by :meth:`decode` after a crash): values
        as float32 (what the GPU records keep), ~220 B a sample of 8 GPUs."""
        return msgspec.msgpack.encode(
            (
                _STAGE_VERSION,
                self.nodes,
                self.ts_ms.astype("<i8").tobytes(),
                self.values.astype("<f4").tobytes(),
                self.gpu_counts.astype("<u1").tobytes(),
                self.gpus.astype("<f4").tobytes(),
            )
        )

    @classmethod
    def decode(cls, body: bytes) -> Staged:
        """What :meth:`encode` wrote; ``ValueError`` if it is not that."""
        try:
            version, nodes, ts, values, counts, gpus = msgspec.msgpack.decode(body)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"unreadable staged rollup batch: {exc}") from exc
        if version != _STAGE_VERSION:
            raise ValueError(f"staged rollup batch of version {version!r}")
        return cls(
            list(nodes),
            np.frombuffer(ts, "<i8").astype(np.int64),
            np.frombuffer(values, "<f4").astype(np.float64).reshape(-1, len(_SAMPLE)),
            np.frombuffer(counts, "<u1").astype(np.int64),
            np.frombuffer(gpus, "<f4").astype(np.float64).reshape(-1, _PACKED),
        )


_SAMPLE_FIELDS: Final = operator.itemgetter(4, 8, 9, 11, 10, 12, 15)
"""A :class:`~collector.store.db.SampleRow`'s interval, GPUs, utilisation, GPU power, GPU
memory, CPU power and node power, in one C call."""


def stage(rows: Sequence[SampleRow], busy_util_pct: float) -> Staged:
    """New sample rows as columns. Busy GPUs (utilisation at or above ``busy_util_pct``)
    and the hottest GPU are counted here, per sample, with the threshold in force now."""
    n = len(rows)
    got = np.array(list(map(_SAMPLE_FIELDS, rows)), dtype=np.float64).reshape(n, 7)
    values = np.empty((n, len(_SAMPLE)))
    values[:, [0, 1, 2, 4, 6, 7, 8]] = got
    values[:, 3] = 0.0
    values[:, 5] = math.nan
    blobs = [r.gpu_stats for r in rows]
    gpus = np.frombuffer(b"".join(blobs), dtype=np.float64).reshape(-1, _PACKED)
    counts = np.fromiter(map(len, blobs), dtype=np.int64, count=n) // (8 * _PACKED)
    has = counts > 0
    if has.any():
        starts = (np.cumsum(counts) - counts)[has]
        busy = np.where(gpus[:, 1] >= busy_util_pct, 1.0, 0.0)  # NaN (unreported): not busy
        values[has, 3] = np.add.reduceat(busy, starts)
        values[has, 5] = np.fmax.reduceat(gpus[:, 3], starts)
    ts = np.fromiter((r.ts_ms for r in rows), dtype=np.int64, count=n)
    return Staged([r.node for r in rows], ts, values, counts, gpus)


def concat(batches: Iterable[Staged]) -> Staged:
    """Several staged batches as one."""
    parts = list(batches)
    return Staged(
        [name for b in parts for name in b.nodes],
        np.concatenate([b.ts_ms for b in parts]) if parts else np.zeros(0, np.int64),
        np.vstack([b.values for b in parts]) if parts else np.zeros((0, len(_SAMPLE))),
        np.concatenate([b.gpu_counts for b in parts]) if parts else np.zeros(0, np.int64),
        np.vstack([b.gpus for b in parts]) if parts else np.zeros((0, _PACKED)),
    )


@dataclass(slots=True)
class Buckets:
    """Partials per ``(node, res, bucket)`` and per ``(node, res, bucket, gpu)``; nodes as
    codes into :attr:`names` (the same codes in both)."""

    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    keys: I64 = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    """code, res, bucket (start, Unix s)."""
    values: F64 = field(default_factory=lambda: np.zeros((0, len(NODE_COLUMNS))))
    gpu_keys: I64 = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    gpu_values: F64 = field(default_factory=lambda: np.zeros((0, len(GPU_COLUMNS))))
    """``GPU_COLUMNS`` (the GPU's index first, part of the key)."""

    def codes(self, names: Iterable[str]) -> I64:
        """Codes of ``names``, new ones added."""
        index = self.index
        out = [index.setdefault(n, len(index)) for n in names]
        if len(index) > len(self.names):
            self.names.extend(list(index)[len(self.names) :])
        return np.array(out, dtype=np.int64)

    def rows(self) -> npt.NDArray[np.object_]:
        """``(node, res, bucket, *NODE_COLUMNS, gpu_stats)`` per bucket, a row of an object
        array each (NaN as ``None``): parameters without a tuple per row, so a fold leaves
        the garbage collector nothing to scan."""
        n = len(self.keys)
        out = np.empty((n, 4 + len(NODE_COLUMNS)), dtype=object)
        if not n:
            return out
        gk = _combined(self.gpu_keys)
        nk = _combined(self.keys)
        lo = np.searchsorted(gk, nk, "left").tolist()
        hi = np.searchsorted(gk, nk, "right").tolist()
        packed = self.gpu_values.astype(_GPU_DTYPE)
        out[:, 0] = np.array(self.names, dtype=object)[self.keys[:, 0]]
        out[:, 1:3] = self.keys[:, 1:3]
        values = self.values.astype(object)
        values[np.isnan(self.values)] = None
        out[:, 3:-1] = values
        out[:, -1] = [packed[a:b].tobytes() if b > a else None for a, b in zip(lo, hi, strict=True)]
        return out


def _combined(keys: I64) -> I64:
    """(code, res, bucket) as one sortable integer: code, then hours before minutes' order
    does not matter, only that equal keys are equal and the order is that of the sort."""
    hour: I64 = (keys[:, 1] != 60).astype(np.int64)
    out: I64 = (keys[:, 0] << 33) | (hour << 32) | (keys[:, 2] // 60)
    return out


def _starts(key: I64) -> tuple[I64, I64]:
    """The order that sorts ``key``, and where each run of equal keys starts in it."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    return order, starts


def _reduce(keys: I64, values: F64, ops: tuple[list[int], list[int], list[int]]) -> tuple[I64, F64]:
    """Rows with equal keys (node, res, bucket[, gpu]) merged: sums add, minima and
    maxima compare ignoring NaN; sorted by key."""
    if not len(keys):
        return keys, values
    key = _combined(keys)
    if keys.shape[1] > 3:
        key = (key << 7) | keys[:, 3]
    order, starts = _starts(key)
    sums, mins, maxs = ops
    perm = np.array(sums + mins + maxs, dtype=np.int64)
    grouped = values[np.ix_(order, perm)]  # one copy: sorted rows, columns by op
    a, b = len(sums), len(sums) + len(mins)
    out = np.empty((len(starts), values.shape[1]))
    out[:, perm[:a]] = np.add.reduceat(grouped[:, :a], starts, axis=0)
    if mins:
        out[:, perm[a:b]] = np.fmin.reduceat(grouped[:, a:b], starts, axis=0)
    out[:, perm[b:]] = np.fmax.reduceat(grouped[:, b:], starts, axis=0)
    return keys[order[starts]], out


def _known(x: F64) -> F64:
    return (~np.isnan(x)).astype(np.float64)


def _zero(x: F64) -> F64:
    return np.nan_to_num(x, nan=0.0)


def _sample_partials(v: F64) -> F64:
    dt, g, util, busy, power, tmax, mem, cpu, node_w = v.T
    return np.column_stack(
        (
            np.ones_like(dt),
            dt,
            g,
            g * dt,
            _zero(g * util / 100.0 * dt),
            busy * dt,
            _known(util),
            _zero(util),
            util,
            util,
            _known(power),
            _zero(power),
            power,
            power,
            tmax,
            _known(mem),
            _zero(mem),
            mem,
            mem,
            _zero(power * dt),
            _known(cpu),
            _zero(cpu),
            cpu,
            cpu,
            _zero(cpu * dt),
            _known(node_w),
            _zero(node_w),
            node_w,
            _known(node_w) * dt,
            _zero(node_w * dt),
        )
    )


def _gpu_minutes(codes: I64, minute: I64, staged: Staged) -> tuple[I64, F64]:
    """Each GPU's 1-minute partials, straight from the staged GPU rows (the bulk of a
    fold's arithmetic: one sort, then one pass per output column)."""
    per = staged.gpu_counts
    g = staged.gpus
    if not len(g):
        return np.zeros((0, 4), np.int64), np.zeros((0, len(GPU_COLUMNS)))
    gmin = np.repeat(minute, per)
    idx = g[:, 0].astype(np.int64)
    rel = gmin // 60 - gmin.min() // 60
    order, starts = _starts((np.repeat(codes, per) << 40) | (rel << 7) | idx)
    cols = g.T[:, order]
    idx_s, util, power, temp, mem = cols
    dt = np.repeat(staged.values[:, 0], per)[order]

    def total(x: F64) -> F64:
        return np.add.reduceat(x, starts)

    def count(x: F64) -> F64:
        return total(_known(x))

    def low(x: F64) -> F64:
        return np.fmin.reduceat(x, starts)

    def high(x: F64) -> F64:
        return np.fmax.reduceat(x, starts)

    out = np.column_stack(
        (
            idx_s[starts],
            count(util),
            total(_zero(util)),
            low(util),
            high(util),
            count(power),
            total(_zero(power)),
            low(power),
            high(power),
            count(temp),
            total(_zero(temp)),
            high(temp),
            count(mem),
            total(_zero(mem)),
            high(mem),
            total(_zero(power * dt)),
        )
    )
    first = order[starts]
    keys = np.column_stack(
        (np.repeat(codes, per)[first], np.full(len(first), 60), gmin[first], idx[first])
    )
    return keys.astype(np.int64), out


def gpu_minutes(ts_ms: I64, interval_s: F64, gpu_stats: Sequence[bytes]) -> tuple[I64, F64]:
    """One node's samples (time stamps, intervals, GPUs as
    :func:`~collector.store.rollups.pack_gpus` packs them) as its GPUs' 1-minute records
    (:data:`GPU_COLUMNS`) with each one's minute, by minute then GPU: what a fold makes of
    them, for a read of raw samples."""
    n = len(ts_ms)
    values = np.full((n, len(_SAMPLE)), math.nan)
    values[:, 0] = interval_s
    gpus = np.frombuffer(b"".join(gpu_stats), dtype=np.float64).reshape(-1, _PACKED)
    counts = np.fromiter(map(len, gpu_stats), dtype=np.int64, count=n) // (8 * _PACKED)
    staged = Staged([""] * n, ts_ms, values, counts, gpus)
    keys, records = _gpu_minutes(np.zeros(n, np.int64), ts_ms // 60_000 * 60, staged)
    return keys[:, 2], records


def gpu_steps(times: I64, records: F64, step: int) -> tuple[I64, F64]:
    """GPU records (:data:`GPU_COLUMNS`, each at its bucket's start in ``times``) merged per
    GPU and ``step`` seconds (whole minutes) as buckets merge: each step's start and
    record, by step then GPU."""
    if not len(times):
        return times, records
    starts = times // step * step
    keys = np.column_stack(
        (np.zeros_like(starts), np.full_like(starts, 60), starts, records[:, 0].astype(np.int64))
    )
    merged, out = _reduce(keys, records, _GPU_OPS)
    return merged[:, 2], out


def _by_hour(keys: I64) -> I64:
    out = keys.copy()
    out[:, 1] = 3600
    out[:, 2] = keys[:, 2] // 3600 * 3600
    return out


def buckets(staged: Staged, into: Buckets | None = None) -> Buckets:
    """The 1-minute and 1-hour partials of ``staged`` samples (the hours made from the
    minutes); node codes from ``into`` (new ones added to it)."""
    out = Buckets() if into is None else into
    codes = out.codes(staged.nodes)
    minute = staged.ts_ms // 60_000 * 60
    keys = np.column_stack((codes, np.full_like(codes, 60), minute))
    mk, mv = _reduce(keys, _sample_partials(staged.values), _NODE_OPS)
    gk, gv = _gpu_minutes(codes, minute, staged)
    hk, hv = _reduce(_by_hour(mk), mv, _NODE_OPS)
    ghk = np.column_stack((_by_hour(gk[:, :3]), gk[:, 3]))
    ghk, ghv = _reduce(ghk, gv, _GPU_OPS)
    out.keys = np.vstack((mk, hk))
    out.values = np.vstack((mv, hv))
    out.gpu_keys = np.vstack((gk[:, :3], ghk[:, :3]))
    out.gpu_values = np.vstack((gv, ghv))
    _sort(out)
    return out


def _sort(b: Buckets) -> None:
    """Order both by key (the order :meth:`Buckets.rows` pairs them in)."""
    order = np.argsort(_combined(b.keys), kind="stable")
    b.keys, b.values = b.keys[order], b.values[order]
    gpu = b.gpu_values[:, 0].astype(np.int64)
    gorder = np.argsort((_combined(b.gpu_keys) << 7) | gpu, kind="stable")
    b.gpu_keys, b.gpu_values = b.gpu_keys[gorder], b.gpu_values[gorder]


def decode_gpus(blob: bytes | None) -> F64:
    """A bucket's packed GPU records as rows of :data:`GPU_COLUMNS`."""
    if not blob:
        return np.zeros((0, len(GPU_COLUMNS)))
    return np.frombuffer(blob, _GPU_DTYPE).astype(np.float64).reshape(-1, len(GPU_COLUMNS))


def _merge_into(
    into: F64, at: I64, values: F64, ops: tuple[list[int], list[int], list[int]]
) -> None:
    """Merge ``values`` into the rows ``at`` of ``into`` (distinct rows), column by op."""
    sums, mins, maxs = ops
    for cols, fn in ((sums, np.add), (mins, np.fmin), (maxs, np.fmax)):
        if cols:
            idx = np.ix_(at, np.array(cols, dtype=np.int64))
            into[idx] = fn(into[idx], values[:, cols])


def merge(new: Buckets, stored: Sequence[Sequence[Any]]) -> Buckets:
    """``new`` with the GPU records of the ``stored`` buckets of its keys merged in (rows
    ``(node, res, bucket, gpu_stats)`` read from the store; the node's own columns merge in
    SQL, :data:`collector.store.rollups.UPSERT_SQL`). No re-sort: each stored record is
    looked up among ``new``'s (sorted) ones; only a GPU that ``new`` lacks is added."""
    blobs = [r[3] or b"" for r in stored]
    gvals = decode_gpus(b"".join(blobs))
    if not len(gvals):
        return new
    codes = new.codes(r[0] for r in stored)
    keys = np.column_stack((codes, [r[1] for r in stored], [r[2] for r in stored]))
    per = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // GPU_RECORD_BYTES
    gkeys = np.repeat(keys.astype(np.int64), per, axis=0)
    want = (_combined(gkeys) << 7) | gvals[:, 0].astype(np.int64)
    have = (_combined(new.gpu_keys) << 7) | new.gpu_values[:, 0].astype(np.int64)
    at = np.searchsorted(have, want)
    found = at < len(have)
    found[found] = have[at[found]] == want[found]
    _merge_into(new.gpu_values, at[found], gvals[found], _GPU_OPS)
    if not found.all():  # GPUs stored that reported nothing new: kept as they were
        new.gpu_keys = np.vstack((new.gpu_keys, gkeys[~found]))
        new.gpu_values = np.vstack((new.gpu_values, gvals[~found]))
        _sort(new)
    return new
