"""``collector query``: recent stats from the store (works while the daemon runs)."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from collector.cli._args import add_settings_args, settings_from_args
from collector.cli._render import Column, print_json, render_table
from collector.settings import CollectorSettings
from collector.store import queries as query
from collector.store.db import Store
from shared.topics import validate_node_id
from shared.units import format_bytes, format_duration, format_watts, parse_duration

__all__ = ["add_parser", "run"]


def _pct(v: float) -> str:
    return f"{v:.1f}%"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector query``."""
    p = sub.add_parser(
        "query",
        help="recent stats: fleet summary, one node's samples, per-GPU rows",
        description=(
            "Without options: a fleet summary (nodes online/stale/offline, GPUs, mean GPU "
            "utilisation, total power) and one line per node. --node N: that node's samples "
            "since --since. --gpus: one row per GPU from each node's latest sample."
        ),
    )
    add_settings_args(p)
    p.add_argument("--node", metavar="NODE", help="show this node's recent samples")
    p.add_argument(
        "--since",
        default="15m",
        metavar="DURATION",
        help="with --node: how far back (default 15m; units s m h d)",
    )
    p.add_argument("--gpus", action="store_true", help="per-GPU rows (with --node: that node only)")
    p.add_argument(
        "--limit", type=int, default=200, metavar="N", help="at most N rows (default 200)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Answer the query; exit 0, or 2 with one line on a bad flag or missing database."""
    settings = settings_from_args(args)
    since_s = parse_duration(args.since, field="--since")
    if args.node is not None:
        validate_node_id(args.node)
    return asyncio.run(_query(args, settings, since_s))


async def _query(args: argparse.Namespace, settings: CollectorSettings, since_s: float) -> int:
    now = time.time()
    async with Store.open_readonly(settings.db_path) as store:
        if args.gpus:
            rows = await query.gpu_rows(store, args.node, args.limit)
            if args.json:
                print_json({"gpus": rows})
            else:
                _print_gpus(rows)
            return 0
        if args.node is not None:
            samples = await query.node_samples(
                store, args.node, round((now - since_s) * 1000), args.limit
            )
            if args.json:
                print_json({"node": args.node, "since_s": since_s, "samples": samples})
            else:
                _print_samples(args.node, samples, now)
            return 0
        summary = await query.fleet_summary(
            store,
            now,
            stale_intervals=settings.stale_intervals,
            default_interval_s=settings.expected_interval_s,
        )
        summary["nodes"] = summary["nodes"][: args.limit]
        if args.json:
            print_json(summary)
        else:
            _print_summary(summary)
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    util = s["gpu_util_mean_pct"]
    print(
        f"nodes {s['nodes_total']}: {s['nodes_online']} online, {s['nodes_stale']} stale, "
        f"{s['nodes_offline']} offline | GPUs online {s['gpus_online']} | mean GPU util "
        f"{'-' if util is None else _pct(util)} | GPU power {format_watts(s['gpu_power_w'])} | "
        f"CPU power {format_watts(s['cpu_power_w'])}"
    )
    c = s["counters"]
    if c:
        print(
            f"collector: stored {c.get('stored', 0)}, duplicates {c.get('duplicates', 0)}, "
            f"rejected {c.get('rejected', 0)}"
        )
    print()
    print(
        render_table(
            s["nodes"],
            [
                Column("node", "NODE", align_right=False),
                Column("state", "STATE", align_right=False),
                Column("last_sample_age_s", "AGE", format_duration),
                Column("gpus", "GPUS"),
                Column("cpu_pct", "CPU", _pct),
                Column("gpu_util_pct", "GPU UTIL", _pct),
                Column("gpu_power_w", "GPU POWER", format_watts),
                Column("cpu_power_w", "CPU POWER", format_watts),
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
                Column("cpu_pct", "CPU", _pct),
                Column("mem_used_bytes", "MEM USED", format_bytes),
                Column("gpu_count", "GPUS"),
                Column("gpu_util_pct", "GPU UTIL", _pct),
                Column("gpu_mem_used_bytes", "GPU MEM", format_bytes),
                Column("gpu_power_w", "GPU POWER", format_watts),
                Column("cpu_power_w", "CPU POWER", format_watts),
            ],
        )
    )


def _print_gpus(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no GPU data stored yet")
        return
    print(
        render_table(
            rows,
            [
                Column("node", "NODE", align_right=False),
                Column("index", "GPU"),
                Column("util_pct", "UTIL", _pct),
                Column("mem_used_bytes", "MEM USED", format_bytes),
                Column("mem_total_bytes", "MEM TOTAL", format_bytes),
                Column("power_w", "POWER", format_watts),
                Column("power_interval_w", "POWER(INT)", format_watts),
                Column("temp_c", "TEMP", lambda v: f"{v:.0f}C"),
                Column("sm_clock_mhz", "SM MHZ"),
                Column("pstate", "P"),
                Column("processes", "PROCS"),
            ],
        )
    )
