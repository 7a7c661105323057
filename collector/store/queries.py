"""Read-side questions about the fleet, answered from the store.

Each function takes a :class:`~collector.store.reader.StoreReader` and returns plain dicts
and lists (JSON-ready); the command module renders them. Every query is served by an index
(``samples (node, ts_ms)``, ``quarantine (node, id)``, primary keys): a day of a
1,000-node fleet at one sample a minute is 1.44 M rows, and no answer reads them all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

from collector.jobfacts import job_label
from collector.nodefacts import STATES, Staleness, gap_missing
from collector.store.dialect import Dialect, Row, growing_side, pick
from collector.store.reader import StoreReader
from shared.cli import shown

__all__ = [
    "active_alerts",
    "alert_history",
    "dead_letters",
    "fleet_summary",
    "gpu_rows",
    "job_rows",
    "latest_sample",
    "meta_value",
    "node_samples",
    "printable",
    "rejected_messages",
    "silences",
]

_LATEST_SAMPLE_SQLITE: Final = (
    "samples s ON s.rowid = (SELECT CASE WHEN w.top_ts_ms IS NULL OR x.ts_ms = w.top_ts_ms "
    "OR x.ts_ms > w.seen_ts_ms AND (x.epoch IS NOT w.epoch OR x.seq > w.top) "
    "THEN x.rowid ELSE (SELECT rowid FROM samples "
    "WHERE node = n.node AND ts_ms = w.top_ts_ms) END "
    "FROM samples x LEFT JOIN watermarks w ON w.node = n.node WHERE x.node = n.node "
    "ORDER BY x.ts_ms DESC LIMIT 1)"
)
_NODE_PG: Final = growing_side("postgresql", "n.node")
_LATEST_SAMPLE_PG: Final = (
    "LATERAL (SELECT x.* FROM (SELECT CASE WHEN w.top_ts_ms IS NULL OR m.ts_ms > w.seen_ts_ms "
    "AND (m.epoch IS DISTINCT FROM w.epoch OR m.seq > w.top) "
    "THEN m.ts_ms ELSE w.top_ts_ms END AS ts_ms FROM (SELECT ts_ms, epoch, seq FROM samples "
    f"WHERE node = {_NODE_PG} ORDER BY ts_ms DESC LIMIT 1) AS m "
    "LEFT JOIN watermarks w ON w.node = n.node) AS k "
    f"JOIN samples x ON x.node = {_NODE_PG} AND x.ts_ms = k.ts_ms OFFSET 0) "
    "AS s ON true"
)


def latest_sample(dialect: Dialect, *, outer: bool = True) -> str:
    """The join of node ``n`` to its newest sample ``s`` (``FROM nodes n`` then this; a node
    without samples keeps a row of NULLs, or none when not ``outer``): the newest by the
    agent's ``(epoch, seq)``, the one the live view holds
    (:func:`collector.live.LiveView.on_sample`), not the newest by the node's clock, which a
    clock stepped back (NTP) or an agent restarted behind its last run's clock would leave
    in the past for as long as the step.

    The node's watermark (:mod:`collector.store.watermarks`) names that sample
    (``top_ts_ms``) as of its last round, once per watermark interval. A sample stamped
    after every sample that round had taken in (``seen_ts_ms``) came after it and is newer
    by the live view's rule too (a later ``seq``, a later run, or an agent before epochs,
    newest by time): that one; unless it is of the watermark's epoch and numbered at or
    below its ``top``: a second sender in the run (an agent cloned with its spool, replaying
    seqs stamped later; ``NodeAgentConflict``), newer by the clock only, which the live
    view does not take either (one run by ``seq``): the watermark's. Without a watermark
    (agents before epochs; watermarks off, or a share group, whose members write none), the
    newest by time, as the live view orders agents before epochs.

    For an agent with epochs but no watermark (``watermark_interval_s = 0``, or a share
    group) the two differ, and only then: the live view goes by ``seq`` within a run
    (:func:`collector.live._later_sample`), this by the node's clock. After a clock stepped
    back S seconds it shows the last sample before the step for up to S seconds (the node
    may read stale in ``collector query`` meanwhile, not in the live view, alerts or
    /metrics); after a restart behind the last run's clock, that run's last sample until
    the new run's clock passes it; a second sender's samples stamped later (an agent cloned
    with its spool) while it sends; a late sample of an older run stamped after the newest
    run's samples. Not the live view's: its rule needs each node's highest ``seq`` of its newest
    ``epoch``, which no index gives (``samples`` has ``(node, ts_ms)`` only); one on
    ``(node, epoch, seq)`` would cost every stored sample an index entry, and without it
    the search reads each node's stored samples (a day at 10 s: 8,640 a node, 108 M at
    12,500 nodes, for each fleet query). The watermark is what names that sample once per
    interval; a share group's members, each storing only its share, cannot count holes
    (``Collector._marking``). ``tests/collector/store/test_latest_sample.py`` pins both. A
    sample stored since the
    last round but stamped no later than it (the clock just stepped back), or numbered past
    it while a second sender's stamped later came after, shows from the next round (a
    second by default).

    Cost per node: one descent of the unique ``(node, ts_ms)`` index for the newest time,
    one primary-key lookup in ``watermarks``, then the row; no index on ``(epoch, seq)``,
    which every stored sample would pay for. On SQLite the row is read by the ``rowid`` the
    index entry holds (a second descent only for a node whose watermark names an older
    sample): the watermark's lookup costs what that second descent did.

    On PostgreSQL the newest time is a ``LATERAL`` subquery's column, not a scalar subquery
    in the join condition, which ran twice per node (to prune the day partitions at run
    time, then as the index key; or to hash, then to recheck) and which the planner, once
    its statistics made it look cheaper, answered by hashing every stored sample. The
    ``OFFSET 0`` keeps the subquery from being pulled up into the outer join (a subquery
    with a limit or offset is not: ``is_simple_subquery`` in PostgreSQL's
    src/backend/optimizer/prep/prepjointree.c), so the plan is one loop over the nodes,
    whatever the statistics (``bench/bench_pg_fleet.py``). ``n.node`` is compared
    in ``samples.node``'s collation (:func:`~collector.store.dialect.growing_side`):
    compared as bytes, no index serves the lookups and each node's read every stored sample
    (3,000 nodes x 20 samples: over 20 s)."""
    join = "LEFT JOIN" if outer else "JOIN"
    return f"{join} {pick(dialect, sqlite=_LATEST_SAMPLE_SQLITE, postgresql=_LATEST_SAMPLE_PG)}"


# Wire-schema GPU fields a row shows, and those that are floats there: a payload decoded as
# plain JSON gives 87 where the schema's decoder gave 87.0, and --json must not change.
_GPU_FIELDS: Final = (
    "index",
    "uuid",
    "util_pct",
    "mem_used_bytes",
    "mem_total_bytes",
    "power_w",
    "power_interval_w",
    "energy_j",
    "temp_c",
    "sm_clock_mhz",
    "pstate",
    "clock_event_reasons",
    "mem_reserved_bytes",
    "mem_clock_mhz",
    "mem_temp_c",
    "enc_util_pct",
    "dec_util_pct",
    "pcie_replays",
)
_GPU_FLOATS: Final = frozenset(
    {
        "util_pct",
        "power_w",
        "power_interval_w",
        "energy_j",
        "temp_c",
        "mem_temp_c",
        "enc_util_pct",
        "dec_util_pct",
    }
)


def fleet_summary(store: StoreReader, now: float, *, staleness: Staleness) -> dict[str, Any]:
    """Nodes by state (:mod:`collector.nodefacts`), GPUs, mean GPU utilisation and total
    power of the online nodes (latest sample per node)."""
    # Each node's newest sample through the (node, ts_ms) index and its watermark: short
    # descents per node (~8 ms for 1,000 nodes over 1.44 M rows), never a scan of the samples.
    rows = store.fetchall(
        "SELECT n.node, n.status, n.status_ts, n.inventory_ts, s.ts_ms / 1000.0 AS last_ts, "
        "s.received_ms / 1000.0 AS last_received, s.interval_s, s.gpu_count, s.cpu_pct, "
        "s.gpu_util_pct, s.gpu_power_w, s.cpu_power_w, s.node_power_w, s.node_power_source "
        f"FROM nodes n {latest_sample(store.dialect)} ORDER BY n.node"
    )
    nodes: list[dict[str, Any]] = []
    counts = dict.fromkeys(STATES, 0)
    gpus = 0
    util_weighted = 0.0
    util_gpus = 0
    gpu_power: float | None = None
    cpu_power: float | None = None
    node_power: float | None = None
    for r in rows:
        state = staleness.state(
            now,
            status=r["status"],
            status_ts=r["status_ts"],
            inventory_ts=r["inventory_ts"],
            received=r["last_received"],
            interval_s=r["interval_s"],
        )
        counts[state] += 1
        n_gpu = r["gpu_count"] or 0
        if state == "online":
            gpus += n_gpu
            if r["gpu_util_pct"] is not None and n_gpu:
                util_weighted += r["gpu_util_pct"] * n_gpu
                util_gpus += n_gpu
            if r["gpu_power_w"] is not None:
                gpu_power = (gpu_power or 0.0) + r["gpu_power_w"]
            if r["cpu_power_w"] is not None:
                cpu_power = (cpu_power or 0.0) + r["cpu_power_w"]
            if r["node_power_w"] is not None:
                node_power = (node_power or 0.0) + r["node_power_w"]
        nodes.append(
            {
                "node": r["node"],
                "state": state,
                "last_sample_age_s": None if r["last_ts"] is None else round(now - r["last_ts"], 1),
                "gpus": n_gpu,
                "cpu_pct": r["cpu_pct"],
                "gpu_util_pct": r["gpu_util_pct"],
                "gpu_power_w": r["gpu_power_w"],
                "cpu_power_w": r["cpu_power_w"],
                "node_power_w": r["node_power_w"],
                "node_power_source": r["node_power_source"],
            }
        )
    return {
        "nodes_total": len(rows),
        "nodes_online": counts["online"],
        "nodes_stale": counts["stale"],
        "nodes_offline": counts["offline"],
        "gpus_online": gpus,
        "gpu_util_mean_pct": round(util_weighted / util_gpus, 2) if util_gpus else None,
        # None when no online node reports it: unknown, not 0 W.
        "gpu_power_w": None if gpu_power is None else round(gpu_power, 1),
        "cpu_power_w": None if cpu_power is None else round(cpu_power, 1),
        "node_power_w": None if node_power is None else round(node_power, 1),
        "counters": store.counters(),
        "nodes": nodes,
    }


def node_samples(store: StoreReader, node: str, since_ms: int, limit: int) -> list[dict[str, Any]]:
    """A node's samples stamped at or after ``since_ms``, newest first."""
    rows = store.fetchall(
        "SELECT ts_ms, seq, interval_s, cpu_pct, mem_used_bytes, mem_total_bytes, gpu_count, "
        "gpu_util_pct, gpu_mem_used_bytes, gpu_power_w, cpu_power_w, node_power_w, "
        "node_power_source FROM samples WHERE node = ? AND ts_ms >= ? ORDER BY ts_ms DESC LIMIT ?",
        (node, since_ms, limit),
    )
    return [
        {"node": node, "ts": r["ts_ms"] / 1000, **{k: r[k] for k in r.keys()[1:]}} for r in rows
    ]


def node_gaps(store: StoreReader, node: str, since_ms: int, limit: int) -> list[dict[str, Any]]:
    """A node's gaps since ``since_ms``, newest first: a jump in ``seq`` between two stored
    samples of one agent epoch (the samples between were numbered but never stored).

    Samples from agents before ``epoch`` are left out: their ``seq`` restarts at 0 with each
    process, so a jump cannot be told from a restart. ``missing`` is bounded by the node's
    clock as the live view's is (:func:`collector.nodefacts.gap_missing`).
    """
    rows = store.fetchall(
        "SELECT epoch, prev_seq, seq, prev_ts_ms, ts_ms, interval_s FROM ("
        " SELECT epoch, seq, ts_ms, interval_s,"
        " LAG(seq) OVER w AS prev_seq, LAG(ts_ms) OVER w AS prev_ts_ms"
        " FROM samples WHERE node = ? AND ts_ms >= ? AND epoch IS NOT NULL"
        " WINDOW w AS (PARTITION BY epoch ORDER BY seq)"
        ") AS g WHERE seq - prev_seq > 1 ORDER BY ts_ms DESC LIMIT ?",
        (node, since_ms, limit),
    )
    return [
        {
            "node": node,
            "epoch": r["epoch"],
            "after_seq": r["prev_seq"],
            "next_seq": r["seq"],
            "missing": gap_missing(
                r["prev_seq"], r["seq"], (r["ts_ms"] - r["prev_ts_ms"]) / 1000, r["interval_s"]
            ),
            "from_ts": r["prev_ts_ms"] / 1000,
            "to_ts": r["ts_ms"] / 1000,
        }
        for r in rows
    ]


def gpu_rows(store: StoreReader, node: str | None, limit_nodes: int) -> list[dict[str, Any]]:
    """One row per GPU from the latest stored sample of ``node``, or of the first
    ``limit_nodes`` nodes (by name) that have samples."""
    if node is not None:
        latest = store.fetchall(
            "SELECT n.node, s.payload, s.payload_dict FROM nodes n "
            f"{latest_sample(store.dialect, outer=False)} WHERE n.node = ?",
            (node,),
        )
    else:
        latest = store.fetchall(
            "SELECT n.node, s.payload, s.payload_dict FROM nodes n "
            f"{latest_sample(store.dialect, outer=False)} ORDER BY n.node LIMIT ?",
            (limit_nodes,),
        )
    out: list[dict[str, Any]] = []
    for r in latest:
        # Stored payloads were validated on arrival; plain JSON reads them back without
        # judging old rows by a newer schema's rules.
        sample = store.sample_object(r["payload"], r["payload_dict"])
        infos = {j.get("id"): j for j in sample.get("jobs") or ()}
        for g in sample.get("gpus") or ():
            row: dict[str, Any] = {"node": r["node"], "ts": float(sample["ts"])}
            for key in _GPU_FIELDS:
                value = g.get(key)
                row[key] = float(value) if key in _GPU_FLOATS and value is not None else value
            nvlink = g.get("nvlink") or {}
            for direction in ("tx", "rx"):
                rate = nvlink.get(f"{direction}_bytes_per_s")
                row[f"nvlink_{direction}_bytes_per_s"] = None if rate is None else float(rate)
            procs = g.get("processes") or ()
            row["processes"] = len(procs)
            row["jobs"] = _jobs(procs, infos)
            row["mig"] = [_mig_row(m, procs, infos) for m in g.get("mig") or ()]
            out.append(row)
    return out


def _jobs(procs: Sequence[dict[str, Any]], infos: dict[Any, Any]) -> list[str]:
    """The jobs of ``procs``, once each, in order."""
    ids = list(dict.fromkeys(p["job"] for p in procs if p.get("job")))
    return [_label(i, infos.get(i)) for i in ids]


def _mig_row(
    mig: dict[str, Any], procs: Sequence[dict[str, Any]], infos: dict[Any, Any]
) -> dict[str, Any]:
    """One MIG device of a GPU: its instance ids, profile, memory and UUID (``None``: not
    sent), and the processes and jobs of the GPU's that run in it."""
    util = mig.get("util_pct")
    ids = (mig.get("gi_id"), mig.get("ci_id"))
    inside = [p for p in procs if (p.get("gi_id"), p.get("ci_id")) == ids]
    return {
        "gi_id": ids[0],
        "ci_id": ids[1],
        "profile": mig.get("profile"),
        "util_pct": None if util is None else float(util),
        "mem_used_bytes": mig.get("mem_used_bytes"),
        "mem_total_bytes": mig.get("mem_total_bytes"),
        "uuid": mig.get("uuid"),
        "processes": len(inside),
        "jobs": _jobs(inside, infos),
    }


def _label(job_id: str, info: dict[str, Any] | None) -> str:
    if info is None:
        return job_id
    return job_label(
        job_id,
        scheduler=info.get("scheduler"),
        namespace=info.get("namespace"),
        name=info.get("name"),
    )


def job_rows(store: StoreReader, now: float, *, staleness: Staleness) -> list[dict[str, Any]]:
    """The jobs running on online nodes (their newest samples), most GPUs first.

    Per job: its nodes, GPUs held (a shared GPU split between its jobs,
    :mod:`collector.jobfacts`), mean utilisation of its GPUs, its share of their power, when
    it started, and GPU-hours so far: GPUs held now x the time since that start, per node (an
    estimate: a job that held fewer GPUs earlier is counted as holding today's all along).
    Its user, account, partition... are what its nodes say, each value once where they differ
    (:func:`_also`).

    Each node says when the job's first process on its GPUs started (``jobs[].started``), and
    any node may name any job: the job's start is the median of its nodes' claims (of an even
    count, the later middle one), so that making a job older takes a strict majority of its
    nodes, and one node's ``started`` = 2000 no longer ages another node's job by decades. A
    node counts its GPU-hours from its own claim, but not before the job's start (a node that
    joined later counts from when it joined). A claim after the claiming sample's own time
    (a process not yet started) is no claim, as is none: such a node adds no GPU-hours.

    Nor does a node count from before its first stored sample, before which the store knows
    nothing (retention took the older ones, or the node is new): every node may claim a bogus
    start (the agent's clock, a bug), and the median of 2000-01-01 made GPU-hours 26 years'
    worth. Where that first sample shows the job, the node counts from it and the figure is a
    lower bound (``gpu_hours_partial``); where it does not, the job started on the node after
    it, when the store does not say: ``gpu_hours`` is None (unknown). A claim inside the stored
    samples is taken as the node's word, as before; checking it would take a search of the
    node's samples (its processes may reach the GPUs well after they start).
    """
    # The schema's decoder (and the rule's reading of a job, :mod:`collector.jobfacts`) only
    # for this question: the other queries read plain JSON and load no msgspec.
    from collector.jobfacts import jobs_on  # noqa: PLC0415
    from shared.errors import SchemaError  # noqa: PLC0415
    from shared.schema import decode_sample  # noqa: PLC0415

    rows = store.fetchall(
        "SELECT n.node, n.status, n.status_ts, n.inventory_ts, s.received_ms, s.interval_s, "
        "s.payload, s.payload_dict FROM nodes n "
        f"{latest_sample(store.dialect, outer=False)} ORDER BY n.node"
    )
    jobs: dict[str, dict[str, Any]] = {}
    utils: dict[str, list[float]] = {}
    # Per job, each node's (GPUs held, its sample's time, when it says the job started
    # there, the node).
    starts: dict[str, list[tuple[float, float, float, str]]] = {}
    for r in rows:
        state = staleness.state(
            now,
            status=r["status"],
            status_ts=r["status_ts"],
            inventory_ts=r["inventory_ts"],
            received=r["received_ms"] / 1000,
            interval_s=r["interval_s"],
        )
        if state != "online":
            continue
        try:
            sample = decode_sample(store.payload(r["payload"], r["payload_dict"]))
        except SchemaError:
            continue  # stored under another schema's rules: not this answer's to judge
        for j in jobs_on(sample):
            info = j.info
            said = {
                "scheduler": info.scheduler if info is not None else None,
                "user": j.user or None,
                "account": info.account if info is not None else None,
                "partition": info.partition if info is not None else None,
                "namespace": info.namespace if info is not None else None,
                "pod": info.name if info is not None else None,
            }
            row = jobs.get(j.job)
            if row is not None:
                for key, value in said.items():
                    row[key] = _also(row[key], value)
            else:
                row = jobs[j.job] = {
                    "job": j.job,
                    "label": j.label,
                    **said,
                    "nodes": [],
                    "gpus": 0.0,
                    "gpu_util_mean_pct": None,
                    "power_w": None,
                    "started": None,
                    "gpu_hours": 0.0,
                    "gpu_hours_partial": False,
                }
                utils[j.job] = []
                starts[j.job] = []
            row["nodes"].append(sample.node)
            row["gpus"] += j.gpu_share
            utils[j.job] += j.util_pct
            if j.power_w is not None:
                row["power_w"] = (row["power_w"] or 0.0) + j.power_w
            started = info.started if info is not None else None
            if started is not None and started <= sample.ts:
                starts[j.job].append((j.gpu_share, sample.ts, started, sample.node))
    first = _FirstSamples(store)
    for job, row in jobs.items():
        claims = starts[job]
        if claims:
            row["started"] = start = sorted(c[2] for c in claims)[len(claims) // 2]
            hours: float | None = 0.0
            for share, ts, started, node in claims:
                since = max(started, start)
                if ts <= since or hours is None:
                    continue
                known = first.ts(node)
                if since < known:  # before the store knows the node
                    if job not in first.jobs(node):
                        hours = None
                        continue
                    since, row["gpu_hours_partial"] = known, True
                hours += share * (ts - since) / 3600
            row["gpu_hours"] = hours
        u = utils[job]
        row["gpu_util_mean_pct"] = round(sum(u) / len(u), 2) if u else None
        row["gpus"] = round(row["gpus"], 3)
        if row["gpu_hours"] is None:
            row["gpu_hours_partial"] = False
        else:
            row["gpu_hours"] = round(row["gpu_hours"], 3)
        if row["power_w"] is not None:
            row["power_w"] = round(row["power_w"], 1)
    return sorted(jobs.values(), key=lambda r: (-r["gpus"], r["label"]))


class _FirstSamples:
    """Each node's first stored sample, read once (one descent of ``samples (node, ts_ms)``)
    and decoded only when asked which jobs it shows (:func:`job_rows`)."""

    def __init__(self, store: StoreReader) -> None:
        self._store = store
        self._rows: dict[str, Row | None] = {}
        self._jobs: dict[str, set[str]] = {}

    def ts(self, node: str) -> float:
        """When (the node's clock, Unix s) its first stored sample was taken (infinity when
        retention took every one since)."""
        row = self._row(node)
        return math.inf if row is None else float(row["ts_ms"]) / 1000

    def jobs(self, node: str) -> set[str]:
        """The jobs with a process on the GPUs in that sample (none, where it does not decode
        under this schema's rules)."""
        from collector.jobfacts import jobs_on  # noqa: PLC0415
        from shared.errors import SchemaError  # noqa: PLC0415
        from shared.schema import decode_sample  # noqa: PLC0415

        found = self._jobs.get(node)
        if found is None:
            row = self._row(node)
            found = self._jobs[node] = set()
            if row is not None:
                try:
                    blob = self._store.payload(row["payload"], row["payload_dict"])
                    found.update(j.job for j in jobs_on(decode_sample(blob)))
                except SchemaError:
                    pass
        return found

    def _row(self, node: str) -> Row | None:
        if node not in self._rows:
            rows = self._store.fetchall(
                "SELECT ts_ms, payload, payload_dict FROM samples WHERE node = ? "
                "ORDER BY ts_ms LIMIT 1",
                (node,),
            )
            self._rows[node] = rows[0] if rows else None
        return self._rows[node]


def _also(held: str | None, said: str | None) -> str | None:
    """A job's field (user, account...) as its nodes name it: the value they agree on; where
    they differ, each value once in node order, ``", "``-joined: one node naming another's job
    must not replace what that node says of it (a node that does not know it adds nothing)."""
    if said is None or held == said:
        return held
    if held is None:
        return said
    return held if said in held.split(", ") else f"{held}, {said}"


def printable(head: bytes) -> str:
    """Bytes as text a terminal shows safely: invalid UTF-8 as ``\\xNN``, control and other
    non-printable characters as ``\\n``, ``\\x00``, ``\\u2028``..."""
    return shown(head.decode("utf-8", "backslashreplace"))


def rejected_messages(
    store: StoreReader, *, node: str | None, since_ms: int | None, limit: int
) -> dict[str, Any]:
    """Quarantined messages, newest first, and the collector's ``rejected*`` counters.

    ``node`` and ``since_ms`` (arrival time) filter the messages; the counters are the
    whole fleet's. ``received``: the arrival in Unix seconds, as every time capwatch prints
    (``received_ms``, the same in milliseconds, stays for scripts written against it).
    ``payload_head`` (the message's first 256 bytes) comes as
    :func:`printable` text.
    """
    counters = {
        k: v
        for k, v in sorted(store.counters().items())
        if k.startswith(("rejected", "quarantined_total"))
    }
    if store.lacks("quarantine"):  # a store the collector has not migrated yet
        return {"counters": counters, "messages": []}
    where: list[str] = []
    params: list[Any] = []
    if node is not None:
        where.append("node = ?")
        params.append(node)
    if since_ms is not None:
        where.append("received_ms >= ?")
        params.append(since_ms)
    # id grows with arrival: newest first through the primary key, or (node, id) for a node.
    rows = store.fetchall(
        "SELECT id, received_ms / 1000.0 AS received, received_ms, node, topic, reason, "
        "detail, payload_head, payload_bytes "
        f"FROM quarantine {'WHERE ' + ' AND '.join(where) if where else ''} "
        "ORDER BY id DESC LIMIT ?",
        (*params, limit),
    )
    messages = [{**dict(r), "payload_head": printable(bytes(r["payload_head"]))} for r in rows]
    return {"counters": counters, "messages": messages}


def _alert(row: Any) -> dict[str, Any]:
    out = {k: row[k] for k in row.keys() if k not in ("labels", "annotations")}  # noqa: SIM118
    out["labels"] = json.loads(row["labels"])
    out["annotations"] = json.loads(row["annotations"])
    return out


def active_alerts(store: StoreReader) -> list[dict[str, Any]]:
    """Firing then pending alerts, longest-standing first (the ``alerts`` table)."""
    if store.lacks("alerts"):
        return []
    rows = store.fetchall(
        "SELECT fingerprint, rule, state, active_at, starts_at, labels, annotations "
        "FROM alerts ORDER BY state = 'pending', coalesce(starts_at, active_at), rule"
    )
    return [_alert(r) for r in rows]


def alert_history(store: StoreReader, since: float, limit: int) -> list[dict[str, Any]]:
    """Alert state changes since ``since`` (Unix seconds), newest first."""
    if store.lacks("alert_history"):
        return []
    rows = store.fetchall(
        "SELECT fingerprint, rule, previous, state, at, starts_at, ends_at, labels, "
        "annotations FROM alert_history WHERE at >= ? ORDER BY at DESC, id DESC LIMIT ?",
        (since, limit),
    )
    return [_alert(r) for r in rows]


def dead_letters(store: StoreReader, limit: int) -> list[dict[str, Any]]:
    """Webhook notifications given up on, newest first, with the last answer received."""
    if store.lacks("outbox"):
        return []
    rows = store.fetchall(
        "SELECT id, receiver, rule, fingerprint, status, attempts, last_status, last_error, "
        "response_head, created, done_at, uuid FROM outbox WHERE state = 'dead' "
        "ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    out = []
    for r in rows:
        row = dict(r)
        if row["response_head"] is not None:
            row["response_head"] = printable(row["response_head"].encode())
        out.append(row)
    return out


def silences(store: StoreReader, now: float, *, expired: bool = False) -> list[dict[str, Any]]:
    """Silences in force at ``now`` (or every one, ``expired``), newest first; matchers as
    a list of strings."""
    if store.lacks("silences"):
        return []
    rows = store.fetchall(
        "SELECT id, matchers, starts_at, ends_at, comment, author, created FROM silences "
        "WHERE ends_at > ? ORDER BY id DESC",
        (float("-inf") if expired else now,),
    )
    out = []
    for r in rows:
        item = {k: r[k] for k in r.keys()}  # noqa: SIM118
        item["matchers"] = json.loads(r["matchers"])
        out.append(item)
    return out


def meta_value(store: StoreReader, key: str) -> str | None:
    """A fact the collector recorded in ``meta`` (``None``: never recorded)."""
    if not store.has_table("meta"):
        return None
    rows = store.fetchall("SELECT value FROM meta WHERE key = ?", (key,))
    return str(rows[0][0]) if rows else None
