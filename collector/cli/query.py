"""``collector query``: what the store knows, as tables for a person or JSON for a script.

Works while the daemon runs (a read-only connection reads one WAL snapshot). This module
is argument handling and output only; the SQL is in :mod:`collector.store.queries`. The
store code is imported inside :func:`run`, so ``collector query --help`` loads none of it.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any, Final

from collector.cli import COMMANDS
from collector.cli._args import add_settings_args, read_settings_from_args
from collector.cli._render import Column, cut, print_json, render_table
from shared.durations import format_exact, parse_duration
from shared.errors import ConfigError
from shared.topics import NODE_ID_RE, NODE_ID_RULE
from shared.units import J_PER_KWH, format_bytes, format_duration, format_pct, format_watts

if TYPE_CHECKING:
    from collector.cli._args import ReadSettings
    from collector.store.reader import StoreReader

__all__ = ["add_parser", "require_known_node", "run"]

_DESCRIPTION: Final = """\
Answers from the collector's store (works while the collector runs).

  (no option)   fleet summary: nodes online/stale/offline, GPUs online, mean GPU
                utilisation, GPU and CPU power, the collector's counters; then one line
                per node from its latest sample
  --node NODE   that node's samples since --since (default 15m), newest first
  --gaps        with --node: its gaps since --since (default 15m), newest first: samples
                the agent numbered (seq, within one agent epoch) that were never stored
  --gpus        one row per GPU from each node's latest sample (with --node: that node),
                with the jobs (Slurm job id, namespace/pod) that have a process on it;
                a GPU in MIG mode is followed by a row per MIG device (profile, GPU
                instance id, memory; NVML reports no utilisation for MIG devices).
                With --node and --since (or --step): that node's GPUs' history, a row
                per step and GPU (utilisation, power, temperature, memory, energy), from
                the rollups for the minutes (hours) already folded, raw samples for those
                not folded yet (the last minute or two), each step saying its source
  --jobs        the jobs running on online nodes: user, nodes, GPUs held, mean GPU
                utilisation, power, AGE (since the job started: the median of its
                nodes' claims, so one node cannot age another's job), GPU-hours so far
                (GPUs held x time since each node's start, not before the job's nor the
                node's first stored sample: >= where the job is older than that sample,
                - where that sample does not show it), most GPUs first
  --rejected    messages the collector quarantined (rejected or not storable), newest
                first, with the rejected counters per reason; --node and --since filter;
                --json: each message's arrival as received (Unix seconds, like every
                time capwatch prints) and received_ms (the same in ms, kept for scripts)
  --step STEP   history in steps (a whole number of minutes, or of hours from 1h): the
                node's (--node) or the fleet's mean GPU utilisation and power per step over
                --since, from the raw samples where the store still has them (retention_s)
                and from the rollups before (1-minute ones for steps under an hour, kept
                rollups.retention_1m_s; 1-hour ones, rollups.retention_1h_s); each step
                says its source (raw, 1m, 1h). Also without --step when --since reaches
                past the raw samples (step 1h past two days, else 1m), or --since alone

A node is offline when its status topic says so, stale when it sent no sample for
stale_intervals x its sampling interval (settings; default 3 x)."""

_EPILOG: Final = """\
examples:
  collector query
  collector query --node x1000c0s0b0n0 --since 1h
  collector query --gpus --node x1000c0s0b0n0
  collector query --jobs --json
  collector query --node x1000c0s0b0n0 --gaps --since 1d
  collector query --rejected --since 24h --json
  collector query --node x1000c0s0b0n0 --since 30d --step 1h
  collector query --node x1000c0s0b0n0 --gpus --since 30d --step 1h --json
  collector query --since 7d --json

exit status: 0 answered; 2 a bad flag or setting, or no database (one line)."""

_LIMIT_DEFAULT: Final = 200
_LIMIT_MAX: Final = 1_000_000
_LIMIT_DEFAULT_REJECTED: Final = 50
_SINCE_DEFAULT_NODE_S: Final = 900.0  # 15m, as the help says
_TABLE_DETAIL_COLUMNS: Final = 80  # msgspec names the field path at the end
_TABLE_PAYLOAD_COLUMNS: Final = 80


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= n <= _LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"must be between 1 and {_LIMIT_MAX:,}, got {n}")
    return n


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector query``."""
    p = sub.add_parser(
        "query",
        help=COMMANDS["query"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument(
        "--node",
        metavar="NODE",
        help="one node: its recent samples (with --gpus its GPUs, with --rejected its messages)",
    )
    p.add_argument(
        "--since",
        metavar="DURATION",
        help="how far back: --node samples by their time stamp (default 15m), --rejected "
        "messages by arrival (default: all kept); units ms s m h d w, e.g. 90s, 2h",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--gpus", action="store_true", help="per-GPU rows from each node's latest sample"
    )
    mode.add_argument(
        "--jobs",
        action="store_true",
        help="running jobs (Slurm, Kubernetes pods) with their GPUs, utilisation, power, "
        "GPU-hours so far",
    )
    mode.add_argument(
        "--gaps",
        action="store_true",
        help="with --node: samples the node numbered but the store never got (a jump in seq "
        "within one agent epoch), with the times either side",
    )
    mode.add_argument(
        "--rejected",
        action="store_true",
        help="quarantined messages (rejected or not storable) and rejected counters by reason",
    )
    p.add_argument(
        "--limit",
        type=_count,
        metavar="N",
        help=f"at most N nodes (summary, --gpus), jobs (--jobs, most GPUs first) or samples "
        f"(--node); default "
        f"{_LIMIT_DEFAULT}; with --rejected at most N messages, default {_LIMIT_DEFAULT_REJECTED}",
    )
    p.add_argument(
        "--step",
        metavar="DURATION",
        help="history per step over --since: raw samples where kept, rollups before (each "
        "step says which); a whole number of minutes, or of hours from 1h, e.g. 5m, 1h, 1d",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Answer the query; exit 0, or 2 with one line on a bad flag or setting or no database."""
    from collector.store.reader import StoreReader  # noqa: PLC0415 (not for --help)

    settings = read_settings_from_args(args)
    since_s = (
        None if args.since is None else parse_duration(args.since, field="--since", positive=True)
    )
    if args.node is not None and not NODE_ID_RE.match(args.node):
        raise ConfigError(
            f"--node {args.node!r} is not a node id: {NODE_ID_RULE}",
            field="--node",
        )
    if args.gaps and args.node is None:
        raise ConfigError("--gaps needs --node NODE: the node whose gaps to list", field="--gaps")
    step_s = None if args.step is None else _step(args.step)
    if step_s is not None and (args.gaps or args.rejected):
        raise ConfigError(
            "--step goes with --since and --node (and --gpus), or alone", field="--step"
        )
    gpu_history = args.gpus and (since_s is not None or step_s is not None)
    if gpu_history and args.node is None:
        raise ConfigError(
            "--gpus with --since or --step is one node's GPU history: add --node NODE",
            field="--node",
        )
    now = time.time()
    with StoreReader(settings.store_target) as store:
        if args.node is not None and not args.rejected:
            require_known_node(store, args.node, now)
        if gpu_history or (
            not (args.gaps or args.rejected or args.gpus)
            and _wants_history(store, args.node, since_s, step_s, now)
        ):
            _history(store, args, since_s, step_s, now)
        elif args.gaps:
            _gaps(store, args, _SINCE_DEFAULT_NODE_S if since_s is None else since_s, now)
        elif args.rejected:
            _rejected(store, args, since_s, now)
        elif args.gpus:
            _gpus(store, args)
        elif args.jobs:
            _jobs(store, settings, now, args.json, args.limit or _LIMIT_DEFAULT)
        elif args.node is not None:
            _samples(store, args, _SINCE_DEFAULT_NODE_S if since_s is None else since_s, now)
        else:
            _summary(store, args, settings, now)
    return 0


_MINUTE_S: Final = 60
_HOUR_S: Final = 3600
_TWO_DAYS_S: Final = 2 * 86_400.0


def _step(text: str) -> int:
    """``--step`` in seconds: whole minutes, or whole hours from an hour (the rollups')."""
    step = parse_duration(text, field="--step")
    unit = _HOUR_S if step >= _HOUR_S else _MINUTE_S
    if step < _MINUTE_S or step % unit:
        raise ConfigError(
            f"--step {text!r} must be a whole number of minutes (1m-59m) or of hours (1h, "
            "6h, 1d...): the rollups' buckets are minutes and hours",
            field="--step",
        )
    return int(step)


def require_known_node(store: StoreReader, node: str, now: float) -> None:
    """Refuse a ``--node`` the store knows nothing of (a typo would answer as a quiet node,
    exit 0), here and in ``collector plot --node``: known are the nodes with a row (a
    status, inventory or sample came) and, once forgotten, those whose samples or rollups
    remain (they stay until retention).
    The usual answer costs one lookup through the ``(node, ts_ms)`` index."""
    from collector.store.rollups import oldest_raw, rollups_before  # noqa: PLC0415

    if store.run(oldest_raw(node)) is not None:
        return
    from collector.store.series import known_node  # noqa: PLC0415

    if known_node(store, node):
        return
    if store.has_table("rollups") and store.run(rollups_before(node, now)):
        return
    raise ConfigError(f"--node {node!r}: no such node (see `collector query`)", field="--node")


def _wants_history(
    store: StoreReader, node: str | None, since_s: float | None, step_s: int | None, now: float
) -> bool:
    """History when asked (--step), when --since is given for the fleet, or when a node's
    --since reaches back past its oldest raw sample into rollups (a node that is only new
    lists its samples)."""
    if step_s is not None:
        return True
    if since_s is None:
        return False
    if node is None:
        return True
    from collector.store.rollups import oldest_raw, rollups_before  # noqa: PLC0415

    oldest = store.run(oldest_raw(node))
    start = now - since_s
    if oldest is not None and start >= oldest:
        return False
    return store.has_table("rollups") and store.run(
        rollups_before(node, now if oldest is None else oldest)
    )


def _history(
    store: StoreReader,
    args: argparse.Namespace,
    since_s: float | None,
    step_s: int | None,
    now: float,
) -> None:
    """A node's or the fleet's history, or with --gpus a node's GPUs'."""
    from collector.store.series import gpu_history, history  # noqa: PLC0415

    window, step_s = _window(since_s, step_s)
    if args.gpus:
        result = gpu_history(store, args.node, now - window, now, step_s)
    else:
        result = history(store, now - window, now, step_s, node=args.node)
    result = {"node": args.node, "since_s": window, **result}
    if args.json:
        print_json(result)
    elif args.gpus:
        _print_gpu_history(result)
    else:
        _print_history(result)


def _print_history(result: dict[str, Any]) -> None:
    subject = f"node {result['node']}" if result["node"] else "fleet"
    if not _print_sources(subject, result):
        return
    print(
        render_table(
            [{**p, "time": _utc(p["t"])} for p in result["points"]],
            [
                Column("time", "TIME (UTC)", align_right=False),
                Column("source", "SOURCE", align_right=False),
                Column("samples", "SAMPLES"),
                Column("gpu_util_pct", "GPU UTIL", format_pct),
                Column("gpu_power_w", "GPU POWER", format_watts),
                Column("cpu_power_w", "CPU POWER", format_watts),
            ],
        )
    )


def _print_gpu_history(result: dict[str, Any]) -> None:
    if _print_sources(f"node {result['node']} GPUs {_ranges(result['gpus'])}", result):
        print(
            render_table(
                [
                    {**p, "time": _utc(p["t"]), "kwh": p["energy_j"] / J_PER_KWH}
                    for p in result["points"]
                ],
                [
                    Column("time", "TIME (UTC)", align_right=False),
                    Column("source", "SOURCE", align_right=False),
                    Column("gpu", "GPU"),
                    Column("samples", "SAMPLES"),
                    Column("util_pct", "UTIL", format_pct),
                    Column("util_max_pct", "UTIL MAX", format_pct),
                    Column("power_w", "POWER", format_watts),
                    Column("power_max_w", "POWER MAX", format_watts),
                    Column("temp_c", "TEMP", _celsius),
                    Column("temp_max_c", "TEMP MAX", _celsius),
                    Column("mem_used_bytes", "MEM USED", format_bytes),
                    Column("kwh", "ENERGY", lambda v: f"{v:.3f} kWh"),
                ],
            )
        )
    if result["unreadable_samples"]:
        print(f"{result['unreadable_samples']} raw samples left out: their GPUs could not be read")


def _window(since_s: float | None, step_s: int | None) -> tuple[float, int]:
    """History's window (--since, default 15m) and step (--step, else 1h past two days,
    else 1m)."""
    window = _SINCE_DEFAULT_NODE_S if since_s is None else since_s
    if step_s is None:
        step_s = _HOUR_S if window > _TWO_DAYS_S else _MINUTE_S
    return window, step_s


def _utc(t: float) -> str:
    import datetime as dt  # noqa: PLC0415

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _ranges(ids: list[int]) -> str:
    """``0-3,6``: sorted indexes as runs."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs) or "-"


def _print_sources(subject: str, result: dict[str, Any]) -> bool:
    """A history's first line: its step and sources (where raw begins when both); whether
    it has points to list."""
    names = {"raw": "raw samples", "1m": "1-minute rollups", "1h": "1-hour rollups"}
    sources = [names[s] for s in result["sources"]]
    print(
        f"{subject}, step {format_exact(result['step_s'] * 1000)}: "
        + (" then ".join(sources) if sources else "no data")
        + (
            f" (raw from {_utc(result['raw_from'])} UTC)"
            if "raw" in result["sources"] and len(sources) > 1
            else ""
        )
    )
    return bool(result["points"])


def _celsius(v: float) -> str:
    return f"{v:.0f}C"


def _summary(
    store: StoreReader, args: argparse.Namespace, settings: ReadSettings, now: float
) -> None:
    from collector.store.queries import fleet_summary  # noqa: PLC0415

    summary = fleet_summary(
        store,
        now,
        staleness=settings.staleness(),
    )
    summary["nodes"] = summary["nodes"][: args.limit or _LIMIT_DEFAULT]
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)


def _samples(store: StoreReader, args: argparse.Namespace, since_s: float, now: float) -> None:
    from collector.store.queries import node_samples  # noqa: PLC0415

    since_ms = round((now - since_s) * 1000)
    samples = node_samples(store, args.node, since_ms, args.limit or _LIMIT_DEFAULT)
    if args.json:
        print_json({"node": args.node, "since_s": since_s, "samples": samples})
    else:
        _print_samples(args.node, samples, now)


def _gaps(store: StoreReader, args: argparse.Namespace, since_s: float, now: float) -> None:
    from collector.store.queries import node_gaps  # noqa: PLC0415

    since_ms = round((now - since_s) * 1000)
    gaps = node_gaps(store, args.node, since_ms, args.limit or _LIMIT_DEFAULT)
    missing = sum(g["missing"] for g in gaps)
    if args.json:
        print_json({"node": args.node, "since_s": since_s, "missing": missing, "gaps": gaps})
        return
    if not gaps:
        print(f"no gaps from {args.node} in that window")
        return
    rows = [{**g, "age_s": now - g["to_ts"], "span_s": g["to_ts"] - g["from_ts"]} for g in gaps]
    print(
        render_table(
            rows,
            [
                Column("age_s", "AGE", format_duration),
                Column("epoch", "EPOCH"),
                Column("after_seq", "AFTER SEQ"),
                Column("missing", "MISSING"),
                Column("span_s", "SPAN", format_duration),
            ],
        )
    )
    print(f"{missing} samples missing in {len(gaps)} gaps")


def _gpus(store: StoreReader, args: argparse.Namespace) -> None:
    from collector.store.queries import gpu_rows  # noqa: PLC0415

    rows = gpu_rows(store, args.node, args.limit or _LIMIT_DEFAULT)
    if args.json:
        print_json({"gpus": rows})
    else:
        _print_gpus(rows)


def _jobs(
    store: StoreReader, settings: ReadSettings, now: float, as_json: bool, limit: int
) -> None:
    from collector.store.queries import job_rows  # noqa: PLC0415

    rows = job_rows(store, now, staleness=settings.staleness())[:limit]  # most GPUs first
    if as_json:
        print_json({"jobs": rows})
        return
    if not rows:
        print("no running jobs seen (agents attribute GPU processes to Slurm jobs and pods)")
        return
    print(
        render_table(
            [{**r, "gpu_hours_shown": _gpu_hours_shown(r)} for r in rows],
            [
                Column("label", "JOB", align_right=False),
                Column("user", "USER", align_right=False),
                Column("account", "ACCOUNT", align_right=False),
                Column("partition", "PARTITION", align_right=False),
                Column("nodes", "NODES", lambda v: cut(",".join(v), 40), align_right=False),
                Column("gpus", "GPUS", lambda v: f"{v:g}"),
                Column("gpu_util_mean_pct", "UTIL", format_pct),
                Column("power_w", "POWER", format_watts),
                Column("started", "AGE", lambda v: format_duration(max(0.0, now - v))),
                Column("gpu_hours_shown", "GPU-H"),
            ],
        )
    )


def _gpu_hours_shown(row: dict[str, Any]) -> str:
    """A job's GPU-hours in the table: ``-`` unknown, ``>=`` a lower bound
    (:func:`~collector.store.queries.job_rows`)."""
    hours = row["gpu_hours"]
    if hours is None:
        return "-"
    return f"{'>=' if row['gpu_hours_partial'] else ''}{hours:.2f}"


def _rejected(
    store: StoreReader, args: argparse.Namespace, since_s: float | None, now: float
) -> None:
    from collector.store.queries import rejected_messages  # noqa: PLC0415

    result = rejected_messages(
        store,
        node=args.node,
        since_ms=None if since_s is None else round((now - since_s) * 1000),
        limit=args.limit or _LIMIT_DEFAULT_REJECTED,
    )
    if args.json:
        print_json(result)
    else:
        _print_rejected(result, now)


def _print_summary(s: dict[str, Any]) -> None:
    util = s["gpu_util_mean_pct"]
    print(
        f"nodes {s['nodes_total']}: {s['nodes_online']} online, {s['nodes_stale']} stale, "
        f"{s['nodes_offline']} offline | GPUs online {s['gpus_online']} | mean GPU util "
        f"{'-' if util is None else format_pct(util)} | "
        f"GPU power {format_watts(s['gpu_power_w'])} | "
        f"CPU power {format_watts(s['cpu_power_w'])} | node input power (BMC/PSU) "
        f"{format_watts(s.get('node_power_w'))}"
    )
    c = s["counters"]
    if c:
        print(
            f"store, all time: stored {c.get('stored_total', 0)}, duplicates "
            f"{c.get('duplicates_total', 0)}, quarantined {c.get('quarantined_total', 0)} | "
            f"this collector process: stored {c.get('stored', 0)}, duplicates "
            f"{c.get('duplicates', 0)}, rejected {c.get('rejected', 0)}"
        )
    print()
    if not s["nodes"]:
        print("no nodes yet: no agent has published to this collector")
        return
    print(
        render_table(
            s["nodes"],
            [
                Column("node", "NODE", align_right=False),
                Column("state", "STATE", align_right=False),
                Column("last_sample_age_s", "AGE", format_duration),
                Column("gpus", "GPUS"),
                Column("cpu_pct", "CPU", format_pct),
                Column("gpu_util_pct", "GPU UTIL", format_pct),
                Column("gpu_power_w", "GPU POWER", format_watts),
                Column("cpu_power_w", "CPU POWER", format_watts),
                Column("node_power_w", "NODE POWER", format_watts),
                Column("node_power_source", "FROM", lambda v: v or "-", align_right=False),
            ],
        )
    )


def _print_samples(node: str, samples: list[dict[str, Any]], now: float) -> None:
    if not samples:
        print(f"no samples from {node} in that window")
        return
    rows = [{**r, "age_s": now - r["ts"]} for r in samples]
    print(
        render_table(
            rows,
            [
                Column("age_s", "AGE", format_duration),
                Column("seq", "SEQ"),
                Column("cpu_pct", "CPU", format_pct),
                Column("mem_used_bytes", "MEM USED", format_bytes),
                Column("gpu_count", "GPUS"),
                Column("gpu_util_pct", "GPU UTIL", format_pct),
                Column("gpu_mem_used_bytes", "GPU MEM", format_bytes),
                Column("gpu_power_w", "GPU POWER", format_watts),
                Column("cpu_power_w", "CPU POWER", format_watts),
                Column("node_power_w", "NODE POWER", format_watts),
                Column("node_power_source", "FROM", lambda v: v or "-", align_right=False),
            ],
        )
    )


def _print_gpus(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no GPU data stored yet")
        return
    table: list[dict[str, Any]] = []
    for r in rows:
        # A GPU in MIG mode: its row, then one row per MIG device (its profile and GPU
        # instance, its memory; power, clocks and temperature are the GPU's).
        migs = r["mig"]
        table.append({**r, "mig": f"{len(migs)} MIG" if migs else None})
        table.extend(
            {
                "node": "",
                "index": r["index"],
                "mig": _mig_label(m),
                "util_pct": m["util_pct"],
                "mem_used_bytes": m["mem_used_bytes"],
                "mem_total_bytes": m["mem_total_bytes"],
                "processes": m["processes"],
                "jobs": m["jobs"],
                "mig_uuid": m["uuid"],
            }
            for m in migs
        )
    columns = [
        Column("node", "NODE", align_right=False),
        Column("index", "GPU"),
        Column("mig", "MIG", align_right=False),
        Column("util_pct", "UTIL", format_pct),
        Column("mem_used_bytes", "MEM USED", format_bytes),
        Column("mem_total_bytes", "MEM TOTAL", format_bytes),
        Column("power_w", "POWER", format_watts),
        Column("power_interval_w", "POWER(INT)", format_watts),
        Column("temp_c", "TEMP", _celsius),
        Column("mem_temp_c", "MEM TEMP", _celsius),
        Column("nvlink_tx_bytes_per_s", "NVLINK TX", _rate),
        Column("nvlink_rx_bytes_per_s", "NVLINK RX", _rate),
        Column("sm_clock_mhz", "SM MHZ"),
        Column("mem_clock_mhz", "MEM MHZ"),
        Column("pstate", "P"),
        Column("pcie_replays", "REPLAYS"),
        Column("processes", "PROCS"),
        Column("jobs", "JOB", lambda v: cut(",".join(v), 40) or "-", align_right=False),
    ]
    if any(r["mig"] for r in rows):  # a MIG device's UUID: what CUDA_VISIBLE_DEVICES takes
        columns.append(Column("mig_uuid", "MIG UUID", align_right=False))
    print(render_table(table, columns))


def _rate(bytes_per_s: float) -> str:
    """``9.0e10`` -> ``"83.8 GiB/s"``."""
    return f"{format_bytes(bytes_per_s)}/s"


def _mig_label(mig: dict[str, Any]) -> str:
    """``3g.40gb gi1`` (``ci2`` added for a second compute instance of a GPU instance)."""
    ci = f" ci{mig['ci_id']}" if mig["ci_id"] else ""
    return f"{mig['profile'] or '?'} gi{mig['gi_id']}{ci}"


def _print_rejected(result: dict[str, Any], now: float) -> None:
    counters: dict[str, int] = result["counters"]
    by_reason = ", ".join(
        f"{name.removeprefix('rejected_')} {n}"
        for name, n in counters.items()
        if name.startswith("rejected_") and n  # the collector writes every reason, zeros too
    )
    total = counters.get("rejected", 0)
    print(
        f"rejected since the collector started: {total}" + (f" ({by_reason})" if by_reason else "")
    )
    kept = ", ".join(
        f"{name.removeprefix('quarantined_total_')} {n}"
        for name, n in counters.items()
        if name.startswith("quarantined_total_")
    )
    print(
        f"quarantined in all (every collector process): {counters.get('quarantined_total', 0)}"
        + (f" ({kept})" if kept else "")
    )
    messages = result["messages"]
    if not messages:
        print("no quarantined messages match")
        return
    print()
    rows = [
        {
            "age_s": now - m["received"],
            "source": m["node"] or cut(m["topic"], 40),
            "reason": m["reason"],
            "payload_bytes": m["payload_bytes"],
            "detail": cut(m["detail"], _TABLE_DETAIL_COLUMNS),
            "payload_head": cut(m["payload_head"], _TABLE_PAYLOAD_COLUMNS),
        }
        for m in messages
    ]
    print(
        render_table(
            rows,
            [
                Column("age_s", "AGE", format_duration),
                Column("source", "NODE/TOPIC", align_right=False),
                Column("reason", "REASON", align_right=False),
                Column("payload_bytes", "SIZE", format_bytes),
                Column("detail", "DETAIL", align_right=False),
                Column("payload_head", "PAYLOAD (first bytes)", align_right=False),
            ],
        )
    )
