"""``agent``: the node agent's command line (parsing and dispatch only)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.settings import AgentSettings
from shared.cli import run_command
from shared.errors import CapwatchError
from shared.logging import configure_logging
from shared.settings import load_settings

if TYPE_CHECKING:
    from agent.node import NodeSampler

__all__ = ["build_parser", "main"]


def _settings_args(p: argparse.ArgumentParser, *, broker: bool) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML settings file; CAPWATCH_* env vars override it, flags override both",
    )
    p.add_argument(
        "--node-id",
        metavar="ID",
        help="node name used in topics (default: short hostname; letters, digits, . _ -)",
    )
    p.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="seconds between samples (default 5, at least 1)",
    )
    p.add_argument(
        "--gpu-backend",
        choices=["nvml", "fake", "none"],
        help="nvml (default: real GPUs via NVML), fake (simulated GPUs), none",
    )
    p.add_argument(
        "--fake-gpus", type=int, metavar="N", help="GPUs of the fake backend (default 8)"
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: when stderr is not a terminal)",
    )
    if broker:
        p.add_argument("--host", metavar="HOST", help="MQTT broker host (default 127.0.0.1)")
        p.add_argument("--port", type=int, metavar="PORT", help="MQTT broker port (default 1883)")


def build_parser() -> argparse.ArgumentParser:
    """The full ``agent`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="agent",
        description="capwatch node agent: samples CPU, memory, disks, network, RAPL and NVIDIA "
        "GPUs (NVML) and publishes them over MQTT.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="sample and publish every interval until stopped",
        description="Publish one sample per interval on capwatch/v1/nodes/<node>/"
        "sample (QoS 1), a retained inventory and online status; the broker's "
        "last will marks the node offline. While the broker is away, samples wait "
        "in a bounded buffer (one hour by default) and are sent in order later.",
    )
    _settings_args(p, broker=True)
    p.add_argument(
        "--buffer",
        metavar="DURATION",
        help="how much sampling time to buffer while disconnected (default 1h)",
    )
    p.set_defaults(handler=_run)

    p = sub.add_parser(
        "sample",
        help="print one sample as JSON and exit",
        description="Take a priming reading, wait --wait seconds so rates (CPU %%, "
        "bytes/s, interval power) have a baseline, then print one sample.",
    )
    _settings_args(p, broker=False)
    p.add_argument(
        "--wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between the priming and the printed reading (default 1; 0: rates null)",
    )
    p.set_defaults(handler=_sample)

    p = sub.add_parser("inventory", help="print this node's inventory as JSON and exit")
    _settings_args(p, broker=False)
    p.set_defaults(handler=_inventory)

    p = sub.add_parser(
        "simulate",
        help="publish a synthetic fleet (demo, tests, benchmark)",
        description="Publish samples for --nodes synthetic nodes with xname ids and "
        "fake GPUs, deterministic from --seed, plus their inventories and status.",
    )
    _settings_args(p, broker=True)
    p.add_argument("--nodes", type=int, default=16, metavar="N", help="fleet size (default 16)")
    p.add_argument("--gpus-per-node", type=int, default=8, metavar="N", help="default 8")
    p.add_argument("--seed", type=int, default=0, help="profile seed (default 0)")
    p.add_argument(
        "--ticks", type=int, metavar="N", help="stop after N ticks (default: run until stopped)"
    )
    p.add_argument(
        "--burst",
        action="store_true",
        help="do not wait between ticks (timestamps still step by --interval)",
    )
    p.add_argument(
        "--first-index",
        type=int,
        default=0,
        metavar="I",
        help="number node ids from this index (several simulators side by side)",
    )
    p.add_argument("--json", action="store_true", help="print the run's figures as JSON at the end")
    p.set_defaults(handler=_simulate)
    return parser


def _load(args: argparse.Namespace, **extra: Any) -> AgentSettings:
    overrides: dict[str, Any] = {
        "node_id": args.node_id,
        "interval_s": args.interval,
        "gpu_backend": args.gpu_backend,
        "fake_gpus": args.fake_gpus,
        "log_level": args.log_level,
        "log_json": args.log_json,
        "mqtt": {"host": getattr(args, "host", None), "port": getattr(args, "port", None)},
        **extra,
    }
    settings = load_settings(AgentSettings, config_file=args.config, overrides=overrides)
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


def _node_sampler(settings: AgentSettings) -> NodeSampler:
    from agent.service import build_sampler  # noqa: PLC0415 (psutil/NVML only when sampling)
    from shared.clock import SystemClock  # noqa: PLC0415

    return build_sampler(settings, SystemClock())


def _print(obj: Any) -> None:
    from shared.schema import encode  # noqa: PLC0415

    print(json.dumps(json.loads(encode(obj)), indent=2))


def _run(args: argparse.Namespace) -> int:
    from agent.service import AgentService  # noqa: PLC0415
    from shared.units import parse_duration  # noqa: PLC0415

    extra = (
        {} if args.buffer is None else {"buffer_s": parse_duration(args.buffer, field="--buffer")}
    )
    settings = _load(args, **extra)
    service = AgentService(settings, _node_sampler(settings))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    asyncio.run(serve())
    return 0


def _sample(args: argparse.Namespace) -> int:
    settings = _load(args)
    sampler = _node_sampler(settings)
    sampler.start()
    try:
        if args.wait > 0:
            sampler.sample()
            time.sleep(args.wait)
        _print(sampler.sample())
    finally:
        sampler.close()
    return 0


def _inventory(args: argparse.Namespace) -> int:
    settings = _load(args)
    sampler = _node_sampler(settings)
    try:
        _print(sampler.start())
    finally:
        sampler.close()
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from agent.simulate import FleetSimulator, publish_fleet  # noqa: PLC0415

    if args.nodes < 1 or args.nodes > 200_000:
        raise CapwatchError(f"--nodes {args.nodes}: use 1 to 200000")
    settings = _load(args)
    sim = FleetSimulator(
        args.nodes,
        gpus_per_node=args.gpus_per_node,
        seed=args.seed,
        interval_s=settings.interval_s,
        first_index=args.first_index,
    )

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stats = await publish_fleet(
            settings.mqtt,
            sim,
            ticks=args.ticks,
            burst=args.burst,
            stop=stop,
            client_id=f"capwatch-simulator-{args.first_index}",
        )
        figures = {
            "nodes": args.nodes,
            "ticks": stats.ticks,
            "published": stats.published,
            "late_ticks": stats.late_ticks,
            "elapsed_s": round(stats.elapsed_s, 3),
            "samples_per_s": round(stats.published / stats.elapsed_s, 1)
            if stats.elapsed_s
            else None,
        }
        if args.json:
            print(json.dumps(figures))
        else:
            print(" ".join(f"{k}={v}" for k, v in figures.items()))

    asyncio.run(go())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agent`` console script."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
