"""The usage ledger in the store: per hour, node and lease, what was held, used and drawn.

Rows are made by :mod:`collector.governance.ledger` from the 1-hour rollups and the leases,
and written here, an hour's nodes a part at a time (:class:`LedgerPart`, one short
transaction each, so sample batches commit between them): each part replaces its nodes' rows
in the hour, so a recompute gives the same rows, and a lease edited afterwards re-attributes
the hours recomputed. Beside them, ``usage_daily`` sums them per UTC day, lease and pool,
kept in the same transaction: each part takes its nodes' old rows' sums out and adds its new
ones (so keeping it costs the part's rows, not the day's). Reads are
:class:`~collector.store.query.Query` objects for ``collector usage`` and for the quota's
measured basis; whole days read the daily sums.

What a reader sees while an hour is being rewritten (for the few tens of milliseconds
between its first and last part): each node's rows are either all the old ones or all the
new ones, never both and never neither (a node the new computation has no rows for keeps
its old ones until the hour's last part), and the daily sums always equal the rows they sum.
So the hour's totals are those of its nodes, each as of the old or the new computation: the
same as a ledger whose nodes' hours were recomputed at slightly different times.

The pool an hour counts in is the node's pool at the start of that hour
(:class:`PoolHistory`, from ``pool_nodes`` and the ``pool_moves`` that ``collector pool``
records): a node moved at 10:20 counts in its old pool until 11:00, in its new one from
then. Hours are the ledger's grain, and splitting one would make two rows of no lease for one
node and hour; pools move by an operator's command, rarely, so the hour a move falls in
is the whole error.

Portable SQL (``ON CONFLICT``; no SQLite-only functions).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.store.query import Query, first_value, single

if TYPE_CHECKING:
    from collector.store.dialect import Dialect
    from collector.store.writes import Tx, Writes

__all__ = [
    "DAILY_RETENTION_SQL",
    "LEDGER_AT_KEY",
    "LEDGER_COLUMNS",
    "LEDGER_RETENTION_SQL",
    "PART_ROWS",
    "GpuHistory",
    "LeaseHeld",
    "LeaseHistory",
    "LedgerPart",
    "LedgerRow",
    "PoolHistory",
    "dirty_hours",
    "gpu_history",
    "lease_history",
    "leases_held",
    "ledger_at",
    "ledger_days",
    "ledger_parts",
    "pool_history",
    "tenant_used_hours",
    "write_ledger",
    "write_ledger_part",
]

LEDGER_AT_KEY: Final = "ledger_at"
"""Meta row: until when (collector clock, Unix s) the ledger holds what the rollups held."""


class LedgerRow(NamedTuple):
    """One row of ``usage_ledger`` (without ``computed``), in column order."""

    hour: int
    node: str
    lease: str
    tenant: str | None
    pool: str
    gpus: int
    held_h: float
    allocated_gpu_h: float
    busy_gpu_h: float
    used_gpu_h: float
    reported_gpu_h: float
    gpu_kwh: float
    cpu_kwh: float
    node_kwh: float | None
    node_kwh_basis: str


LEDGER_COLUMNS: Final = (*LedgerRow._fields, "computed")
_INSERT: Final = (
    f"INSERT INTO usage_ledger ({', '.join(LEDGER_COLUMNS)})",
    len(LEDGER_COLUMNS),
    " ON CONFLICT (hour, node, lease) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in LEDGER_COLUMNS[3:]),
)
LEDGER_RETENTION_SQL: Final = (
    "DELETE FROM usage_ledger WHERE (hour, node, lease) IN (SELECT hour, node, lease "
    "FROM usage_ledger WHERE hour < ? ORDER BY hour LIMIT ?)"
)
DAILY_RETENTION_SQL: Final = "DELETE FROM usage_daily WHERE day < ?"
"""The days wholly before a cutoff day (their hours are gone with the ledger's)."""


def dirty_hours() -> Query[list[tuple[int, int]]]:
    """The hours whose rollups moved since their ledger rows were written, with the count
    of batches that moved them (a recompute clears an hour only if it is unchanged)."""
    return single(
        "SELECT hour, n FROM ledger_dirty ORDER BY hour",
        (),
        lambda rows: [(int(r[0]), int(r[1])) for r in rows],
    )


_HOUR: Final = 3600
_FREE: Final = "free"
"""The pool of a node in none (:data:`collector.store.pools.FREE`)."""


class PoolHistory:
    """Which pool each node counted in, hour by hour: its pool at the start of the hour.

    Made of the pools now (``pool_nodes``) and the moves recorded since some instant
    (``pool_moves``): before a move, a node was in the move's ``from_pool``. A move at
    ``ts`` counts from the first hour that starts at or after ``ts``.
    """

    def __init__(
        self, now: Mapping[str, str] | None = None, moves: Iterable[Sequence[Any]] = ()
    ) -> None:
        """``now``: node -> its pool now (nodes in none left out); ``moves``: (node, ts,
        from_pool) in the order they were made."""
        self._now = dict(now or {})
        self._moves: dict[str, tuple[list[float], list[str]]] = {}
        for node, ts, from_pool in moves:
            starts, pools = self._moves.setdefault(node, ([], []))
            starts.append(math.ceil(float(ts) / _HOUR) * _HOUR)
            pools.append(from_pool)

    def at(self, node: str, t: float) -> str:
        """The pool ``node`` counts in at instant ``t`` (``free``: in none)."""
        moved = self._moves.get(node)
        if moved is not None:
            starts, pools = moved
            i = bisect.bisect_right(starts, t)  # the first move that counts after t
            if i < len(starts):
                return pools[i]
        return self._now.get(node, _FREE)

    def spans(self, node: str, since: float, until: float) -> list[tuple[float, float, str]]:
        """(start, end, pool): ``node``'s pools over [since, until), in time order."""
        moved = self._moves.get(node)
        cuts = [t for t in (moved[0] if moved else ()) if since < t < until]
        edges = [since, *sorted(set(cuts)), until]
        return [(a, b, self.at(node, a)) for a, b in itertools.pairwise(edges)]

    def at_hour(self, hour: float) -> dict[str, str]:
        """Node -> the pool it counts in during ``hour``, for the nodes in one."""
        out = dict(self._now)
        for node in self._moves:
            pool = self.at(node, hour)
            if pool == _FREE:
                out.pop(node, None)
            else:
                out[node] = pool
        return out


def pool_history(since: float) -> Query[PoolHistory]:
    """The pools now and every move since the start of the hour holding ``since``: what
    :class:`PoolHistory` needs to say a node's pool at any instant from ``since`` on."""
    first = math.floor(since / _HOUR) * _HOUR
    return Query(
        (
            ("SELECT node, pool FROM pool_nodes", ()),
            ("SELECT node, ts, from_pool FROM pool_moves WHERE ts > ? ORDER BY ts, id", (first,)),
        ),
        lambda results: PoolHistory({r[0]: r[1] for r in results[0]}, results[1]),
    )


class LeaseHistory:
    """Which nodes each lease held, and when: the nodes it holds now (``lease_nodes``), and
    the moves recorded since some instant (``lease_moves``: a node that joined the lease,
    or left it, at an instant). A lease holds a node over the spans between those instants,
    to the second: the ledger splits an hour between the leases that held the node in it,
    as it splits one a lease began or ended in. The nodes a lease was created with hold from
    its start."""

    def __init__(self, moves: Iterable[Sequence[Any]] = ()) -> None:
        """``moves``: (lease name, node, ts, joined) in the order they were made."""
        self._moves: dict[str, dict[str, list[tuple[float, bool]]]] = {}
        for lease, node, ts, joined in moves:
            self._moves.setdefault(lease, {}).setdefault(node, []).append((float(ts), bool(joined)))

    def moved(self, lease: str) -> bool:
        """Whether any node joined or left ``lease`` in the history."""
        return lease in self._moves

    def nodes(self, lease: str, now: Sequence[str]) -> tuple[str, ...]:
        """The nodes ``lease`` held at some instant of the history: ``now`` (those it holds
        now), then those that left it since."""
        moved = self._moves.get(lease)
        if not moved:
            return tuple(now)
        return (*now, *sorted(moved.keys() - set(now)))

    def spans(
        self, lease: str, node: str, held_now: bool, lo: float, hi: float
    ) -> list[tuple[float, float]]:
        """The parts of [lo, hi) ``lease`` held ``node`` in (``held_now``: it holds it now)."""
        moved = self._moves.get(lease, {}).get(node)
        if not moved:
            return [(lo, hi)] if held_now and hi > lo else []
        out: list[tuple[float, float]] = []
        held, since = not moved[0][1], -math.inf  # before its first move: the other state
        for ts, joined in [*moved, (math.inf, False)]:
            if held and min(ts, hi) > max(since, lo):
                out.append((max(since, lo), min(ts, hi)))
            held, since = joined, ts
        return out


def lease_history(since: float) -> Query[LeaseHistory]:
    """Every lease's node moves after ``since``: what :class:`LeaseHistory` needs to say
    which nodes a lease held at any instant from ``since`` on (moves of no lease stored
    now are left out)."""
    return single(
        "SELECT l.name, m.node, m.ts, m.joined FROM lease_moves m JOIN leases l "
        "ON l.id = m.lease_id WHERE m.ts > ? ORDER BY m.ts, m.id",
        (since,),
        LeaseHistory,
    )


_NODES_CHUNK: Final = 500
"""Nodes per statement: far under SQLite's variable limit; each an index range."""


class GpuHistory:
    """How many GPUs each node's samples reported, hour by hour: for nodes with no inventory,
    what :func:`collector.nodefacts.gpu_count` takes instead.

    An hour the node reported in counts that hour's own number (the most GPUs in one of its
    samples: the 1-hour rollup's ``gpus``, or the raw samples' ``gpu_count`` where no rollup
    holds the hour yet). An hour it was silent in counts its most recent report before that
    hour, else (silent since before the history begins) its first report after. So a name
    that once belonged to a bigger machine, or one hostile sample, counts in the hours it
    was reported in and those it was followed by in silence, not in every hour of the
    node's history; and an hour recomputed later counts what it counted then.
    """

    def __init__(self, reports: Iterable[Sequence[Any]] = ()) -> None:
        """``reports``: (node, hour start, GPUs), in any order; a node's hour reported
        twice counts its most."""
        counts: dict[str, dict[int, int]] = {}
        for node, hour, n in reports:
            if n is None:
                continue
            seen = counts.setdefault(node, {})
            h = int(hour) // _HOUR * _HOUR
            seen[h] = max(seen.get(h, 0), int(n))
        self._hours: dict[str, tuple[list[int], list[int]]] = {}
        for node, seen in counts.items():
            hours = sorted(seen)
            self._hours[node] = (hours, [seen[h] for h in hours])

    def at(self, node: str, t: float) -> int | None:
        """The GPUs ``node`` counts at instant ``t`` (``None``: it never reported)."""
        reported = self._hours.get(node)
        if reported is None:
            return None
        hours, counts = reported
        i = bisect.bisect_right(hours, t)  # hours[i - 1]: its hour, or its last before
        return counts[i - 1] if i else counts[0]

    def at_hour(self, hour: float) -> dict[str, int]:
        """Node -> the GPUs it counts during ``hour``, for every node of the history."""
        return {node: n for node in self._hours if (n := self.at(node, hour)) is not None}

    def spans(self, node: str, since: float, until: float) -> list[tuple[float, float, int | None]]:
        """(start, end, GPUs): ``node``'s counts over [since, until), in time order, a span
        per change (``None``: it never reported)."""
        reported = self._hours.get(node)
        cuts = [h for h in (reported[0] if reported else ()) if since < h < until]
        out: list[tuple[float, float, int | None]] = []
        for a, b in itertools.pairwise([since, *cuts, until]):
            n = self.at(node, a)
            if out and out[-1][2] == n:
                out[-1] = (out[-1][0], b, n)
            else:
                out.append((a, b, n))
        return out


_PROBES_CHUNK: Final = 100
"""Nodes per statement of one-row probes (a UNION ALL of index seeks)."""


def _probes(nodes: Sequence[str], sql: str, bound: float) -> list[tuple[str, tuple[Any, ...]]]:
    """``sql`` (one node's probe: ``?`` for the node, then ``bound``) for each of ``nodes``,
    :data:`_PROBES_CHUNK` a statement."""
    out = []
    for i in range(0, len(nodes), _PROBES_CHUNK):
        chunk = nodes[i : i + _PROBES_CHUNK]
        union = " UNION ALL ".join(f"SELECT * FROM ({sql}) AS p{k}" for k in range(len(chunk)))
        out.append((union, tuple(v for node in chunk for v in (node, bound))))
    return out


_ROLLUP_BEFORE: Final = (
    f"SELECT node, bucket, gpus FROM rollups WHERE node = ? AND res = {_HOUR} AND bucket < ? "
    "ORDER BY bucket DESC LIMIT 1"
)
_ROLLUP_AFTER: Final = (
    f"SELECT node, bucket, gpus FROM rollups WHERE node = ? AND res = {_HOUR} AND bucket >= ? "
    "ORDER BY bucket LIMIT 1"
)
_SAMPLE_BEFORE: Final = (
    "SELECT node, ts_ms / 1000, gpu_count FROM samples WHERE node = ? AND ts_ms < ? "
    "ORDER BY ts_ms DESC LIMIT 1"
)
_SAMPLE_AFTER: Final = (
    "SELECT node, ts_ms / 1000, gpu_count FROM samples WHERE node = ? AND ts_ms >= ? "
    "ORDER BY ts_ms LIMIT 1"
)


def gpu_history(nodes: Sequence[str], since: float, until: float) -> Query[GpuHistory]:
    """What :class:`GpuHistory` needs to say the GPUs of ``nodes`` at any instant in
    [since, until): their reports in those hours, and each node's last report before them
    and first after, from the 1-hour rollups and the raw samples (those cover what no fold
    has rolled up yet, and a store with the rollups off). Every statement reads through a
    primary key or the ``samples (node, ts_ms)`` index: a range of the hours asked, or one
    row (``ORDER BY ... LIMIT 1``), never a node's whole history."""
    first = math.floor(since / _HOUR) * _HOUR
    last = max(math.ceil(until / _HOUR) * _HOUR, first)
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for i in range(0, len(nodes), _NODES_CHUNK):
        chunk = tuple(nodes[i : i + _NODES_CHUNK])
        marks = ", ".join("?" * len(chunk))
        statements += [
            (
                f"SELECT node, bucket, gpus FROM rollups WHERE node IN ({marks}) AND res = ? "
                "AND bucket >= ? AND bucket < ?",
                (*chunk, _HOUR, first, last),
            ),
            (
                f"SELECT node, ts_ms / {_HOUR * 1000} * {_HOUR}, max(gpu_count) FROM samples "
                f"WHERE node IN ({marks}) AND ts_ms >= ? AND ts_ms < ? GROUP BY 1, 2",
                (*chunk, first * 1000, last * 1000),
            ),
        ]
    before = [*_probes(nodes, _ROLLUP_BEFORE, first), *_probes(nodes, _SAMPLE_BEFORE, first * 1000)]
    after = [*_probes(nodes, _ROLLUP_AFTER, last), *_probes(nodes, _SAMPLE_AFTER, last * 1000)]
    statements += before + after
    return Query(tuple(statements), lambda results: GpuHistory(itertools.chain(*results)))


class LeaseHeld(NamedTuple):
    """A lease as its bill reads it: who, which pool, when (the instants the lease table
    keeps, :func:`collector.governance.lease.instants`), which nodes."""

    name: str
    tenant: str
    pool: str | None
    start_at: float
    end_at: float | None
    """``None``: open-ended (renewing without notice)."""
    nodes: tuple[str, ...]

    def interval(self) -> tuple[float, float | None]:
        """The instants it holds its nodes between."""
        return self.start_at, self.end_at


def leases_held() -> Query[list[LeaseHeld]]:
    """Every lease with its nodes, by id: two short reads, none of the governance model
    (``collector usage`` loads no quota arithmetic)."""

    def build(results: list[list[Any]]) -> list[LeaseHeld]:
        nodes: dict[int, list[str]] = {}
        for lease_id, node in results[1]:
            nodes.setdefault(int(lease_id), []).append(node)
        return [
            LeaseHeld(r[1], r[2], r[3], float(r[4]), None if r[5] is None else float(r[5]),
                      tuple(nodes.get(int(r[0]), ())))
            for r in results[0]
        ]  # fmt: skip

    return Query(
        (
            ("SELECT id, name, tenant, pool, start_at, end_at FROM leases ORDER BY id", ()),
            ("SELECT lease_id, node FROM lease_nodes ORDER BY lease_id, node", ()),
        ),
        build,
    )


def ledger_at() -> Query[float | None]:
    """When the ledger was last brought up to date (``None``: never)."""
    return single(
        "SELECT value FROM meta WHERE key = ?",
        (LEDGER_AT_KEY,),
        lambda rows: None if (v := first_value(rows)) is None else float(v),
    )


_DAILY_SUMS: Final = (
    "count(*), sum(allocated_gpu_h), sum(busy_gpu_h), sum(used_gpu_h), sum(reported_gpu_h), "
    "sum(gpu_kwh), sum(cpu_kwh), coalesce(sum(node_kwh), 0), sum(held_h), "
    # A partly measured hour ('measured+model') counts as measured and as its fallback.
    "sum(CASE WHEN node_kwh_basis LIKE '%model' THEN 1 ELSE 0 END), "
    "sum(CASE WHEN node_kwh_basis LIKE '%gpu+cpu' THEN 1 ELSE 0 END), "
    "sum(CASE WHEN node_kwh_basis LIKE 'measured%' THEN 1 ELSE 0 END)"
)
_DAILY_COLUMNS: Final = (
    "n",
    "allocated_gpu_h",
    "busy_gpu_h",
    "used_gpu_h",
    "reported_gpu_h",
    "gpu_kwh",
    "cpu_kwh",
    "node_kwh",
    "held_h",
    "model_n",
    "parts_n",
    "measured_n",
)


def _daily_sql(sign: str, where: str) -> str:
    """Add (``sign`` '+') or take out ('-') the ledger rows ``where`` selects (of one hour)
    in the daily sums."""
    return (
        f"INSERT INTO usage_daily (day, lease, pool, tenant, {', '.join(_DAILY_COLUMNS)}) "
        f"SELECT hour / 86400, lease, pool, max(tenant), {_DAILY_SUMS} FROM usage_ledger "
        f"WHERE {where} GROUP BY hour / 86400, lease, pool "
        "ON CONFLICT (day, lease, pool) DO UPDATE SET tenant = coalesce(excluded.tenant, "
        "usage_daily.tenant), "
        + ", ".join(f"{c} = usage_daily.{c} {sign} excluded.{c}" for c in _DAILY_COLUMNS)
    )


_OLDER: Final = "hour = ? AND computed <> ?"
"""An hour's rows that an earlier computation wrote (see :class:`LedgerPart`)."""
PART_ROWS: Final[Mapping[Dialect, int]] = {"sqlite": 500, "postgresql": 100}
"""Ledger rows one part writes at most (a node's rows are never split), per backend. At
12,500 nodes (one hour, a loaded 2-core machine): SQLite 5-7 ms a part of 500 (the hour in
one transaction: 115-160 ms); PostgreSQL ~15 ms a part of 100, ~40 ms of 500 (its
multi-row upsert costs ~70 us a row there; the hour in one: 1-1.8 s)."""


class LedgerPart(NamedTuple):
    """One transaction of a ledger write: the new rows of some nodes in one hour.

    It replaces exactly what it covers: the rows of ``nodes`` in ``hour``, whatever
    computation wrote them, and their share of the daily sums (taken out, then the new rows'
    added). The hour's last part (``last_of_hour``) also deletes the rows of nodes the new
    computation has none for (their ``computed`` is not ``at``: a node that left, a lease
    that no longer holds it) and clears the hour's dirty mark read as ``dirty``, unless a
    batch moved it since; the record's last one records ``ledger_at`` (when not ``None``) as
    the ledger's time. So a stop between parts leaves a mark and the old ``ledger_at``: the
    next run recomputes the hour, and writing a part again changes nothing.
    """

    hour: int
    nodes: tuple[str, ...]
    rows: tuple[LedgerRow, ...]
    at: float
    last_of_hour: bool
    dirty: int | None
    ledger_at: float | None
    """The record's last part: the ledger's time it records (meta ``ledger_at``: until when
    the ledger holds what the rollups held); ``None``: the other parts, or a run that
    brought the ledger no further (it stays)."""


def ledger_parts(
    hours: Sequence[int],
    rows: Sequence[LedgerRow],
    dirty: Sequence[tuple[int, int]],
    at: float,
    *,
    until: float | None,
    most_rows: int = PART_ROWS["sqlite"],
) -> list[LedgerPart]:
    """``rows`` (all the new rows of ``hours``, each node's together, computed at ``at``)
    cut in parts of at most ``most_rows`` rows (more where one node has more), in hour
    order; an hour without rows is one part that only deletes. The last part records
    ``until`` as the ledger's time (``None``: it stays)."""
    by_hour: dict[int, list[LedgerRow]] = {h: [] for h in hours}
    for r in rows:
        by_hour[r.hour].append(r)
    marks = dict(dirty)
    out: list[LedgerPart] = []
    for hour in sorted(by_hour):
        chunks: list[list[LedgerRow]] = [[]]
        for _, node_rows in itertools.groupby(by_hour[hour], key=lambda r: r.node):
            group = list(node_rows)
            if chunks[-1] and len(chunks[-1]) + len(group) > most_rows:
                chunks.append([])
            chunks[-1].extend(group)
        for i, chunk in enumerate(chunks):
            end = i == len(chunks) - 1
            nodes = tuple(dict.fromkeys(r.node for r in chunk))
            out.append(
                LedgerPart(hour, nodes, tuple(chunk), at, end, marks.get(hour) if end else None,
                           None)
            )  # fmt: skip
    if out:
        out[-1] = out[-1]._replace(ledger_at=until)
    return out


async def write_ledger_part(store: Writes, part: LedgerPart) -> None:
    """Write one :class:`LedgerPart`, in one transaction, all of it in one call to the
    store's thread (:meth:`~collector.store.writes.Writes.transact`): its statements do not
    each wait for a busy event loop while sample batches queue behind them."""
    hour, at = part.hour, part.at
    mine = f"hour = ? AND node IN ({', '.join('?' * len(part.nodes))})"
    covered = (hour, *part.nodes)

    def work(tx: Tx) -> None:
        if part.nodes:
            tx.execute(_daily_sql("-", mine), covered)
            tx.execute(f"DELETE FROM usage_ledger WHERE {mine}", covered)
            tx.insert_many(_INSERT, [(*r, at) for r in part.rows])
            tx.execute(_daily_sql("+", mine), covered)
        if part.last_of_hour:
            tx.execute(_daily_sql("-", _OLDER), (hour, at))
            tx.execute(f"DELETE FROM usage_ledger WHERE {_OLDER}", (hour, at))
            if part.dirty is not None:
                tx.execute("DELETE FROM ledger_dirty WHERE hour = ? AND n = ?", (hour, part.dirty))
        # Groups no row holds any more (a lease re-attributed, a node gone).
        tx.execute("DELETE FROM usage_daily WHERE day = ? AND n = 0", (hour // 86_400,))
        if part.ledger_at is not None:
            tx.execute(
                "INSERT INTO meta (key, value, updated) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (LEDGER_AT_KEY, repr(part.ledger_at), at),
            )

    await store.transact(f"writing the usage ledger (hour {hour}, {len(part.rows)} rows)", work)


async def write_ledger(
    store: Writes,
    hours: Sequence[int],
    rows: Sequence[LedgerRow],
    dirty: Sequence[tuple[int, int]],
    at: float,
) -> None:
    """Replace ``hours``' ledger rows by ``rows`` and their share of the daily sums; clear
    the ``dirty`` marks no batch moved since they were read; record ``at`` as the ledger's
    time: every part of :func:`ledger_parts` in turn (the writer writes them one at a time,
    between sample batches: :class:`collector.governance.ledger.LedgerRecord`)."""
    for part in ledger_parts(hours, rows, dirty, at, until=at):
        await write_ledger_part(store, part)


def _whole_days(since: float, until: float) -> tuple[int, int] | None:
    """[first, last) day numbers when [since, until) is whole UTC days, else ``None``."""
    if since % 86_400 or (until % 86_400 and not math.isinf(until)):
        return None
    last = 1 << 40 if math.isinf(until) else int(until) // 86_400
    return int(since) // 86_400, last


def tenant_used_hours(since: float, until: float) -> Query[dict[str, tuple[float, float]]]:
    """Tenant -> (utilisation-weighted, busy) GPU-hours its leases' nodes did in the ledger
    hours in [since, until) (whole UTC days: from the daily sums)."""
    days = _whole_days(since, until)
    if days is not None:
        sql = (
            "SELECT tenant, sum(used_gpu_h), sum(busy_gpu_h) FROM usage_daily "
            "WHERE day >= ? AND day < ? AND tenant IS NOT NULL GROUP BY tenant"
        )
        params: tuple[float, ...] = days
    else:
        sql = (
            "SELECT tenant, sum(used_gpu_h), sum(busy_gpu_h) FROM usage_ledger "
            "WHERE hour >= ? AND hour < ? AND tenant IS NOT NULL GROUP BY tenant"
        )
        params = (math.floor(since), math.ceil(min(until, 1 << 40)))
    return single(
        sql, params, lambda rows: {r[0]: (float(r[1] or 0.0), float(r[2] or 0.0)) for r in rows}
    )


_HOURLY_SUMS: Final = (
    "sum(allocated_gpu_h) AS allocated_gpu_hours, sum(busy_gpu_h) AS busy_gpu_hours, "
    "sum(used_gpu_h) AS used_gpu_hours, sum(reported_gpu_h) AS reported_gpu_hours, "
    "sum(gpu_kwh) AS gpu_kwh, sum(cpu_kwh) AS cpu_kwh, sum(node_kwh) AS node_kwh, "
    "sum(CASE WHEN node_kwh_basis LIKE '%model' THEN 1 ELSE 0 END) AS model_rows, "
    "sum(CASE WHEN node_kwh_basis LIKE '%gpu+cpu' THEN 1 ELSE 0 END) AS parts_rows, "
    "sum(CASE WHEN node_kwh_basis LIKE 'measured%' THEN 1 ELSE 0 END) AS measured_rows, "
    "sum(held_h) AS held_node_hours"
)
_DAILY_READ: Final = (
    "sum(allocated_gpu_h) AS allocated_gpu_hours, sum(busy_gpu_h) AS busy_gpu_hours, "
    "sum(used_gpu_h) AS used_gpu_hours, sum(reported_gpu_h) AS reported_gpu_hours, "
    "sum(gpu_kwh) AS gpu_kwh, sum(cpu_kwh) AS cpu_kwh, sum(node_kwh) AS node_kwh, "
    "sum(model_n) AS model_rows, sum(parts_n) AS parts_rows, "
    "sum(measured_n) AS measured_rows, sum(held_h) AS held_node_hours"
)


def ledger_days(
    since: float,
    until: float,
    *,
    tenant: str | None = None,
    lease: str | None = None,
    pool: str | None = None,
) -> Query[list[dict[str, Any]]]:
    """Ledger sums per UTC day, tenant, lease and pool over the hours in [since, until)
    (``tenant``/``lease``/``pool``: only those rows); the caller folds days into weeks or
    months. Rows no lease held have ``tenant`` NULL and ``lease`` ''. Whole days read the
    daily sums; a window that cuts a day reads the hours."""
    days = _whole_days(since, until)
    if days is not None:
        table, day, sums = "usage_daily", "day", _DAILY_READ
        where, params = "day >= ? AND day < ?", list[Any](days)
    else:
        table, day, sums = "usage_ledger", "hour / 86400", _HOURLY_SUMS
        where, params = "hour >= ? AND hour < ?", [math.floor(since), math.ceil(until)]
    for col, value in (("tenant", tenant), ("lease", lease), ("pool", pool)):
        if value is not None:
            where += f" AND {col} = ?"
            params.append(value)
    return single(
        f"SELECT {day} AS day, tenant, lease, pool, {sums} FROM {table} "
        f"WHERE {where} GROUP BY {day}, tenant, lease, pool ORDER BY 1",
        params,
        lambda rows: [dict(r) for r in rows],
    )
