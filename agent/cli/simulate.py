"""``agent simulate``: publish a synthetic fleet (demo, tests, benchmark)."""

from __future__ import annotations

import argparse
import json
import signal
from typing import TYPE_CHECKING

from agent.cli._args import add_settings_args, settings_from_args
from shared.cli import first_error
from shared.errors import CapwatchError, ConfigError, MqttConnectError

if TYPE_CHECKING:
    import aiomqtt

    from shared.settings import MqttSettings

__all__ = ["add_parser", "simulate"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``agent simulate``."""
    p = sub.add_parser(
        "simulate",
        help="publish a synthetic fleet (demo, tests, benchmark)",
        description="Publish samples for --nodes synthetic nodes with xname ids and "
        "fake GPUs, deterministic from --seed, plus their inventories and status.",
    )
    add_settings_args(p, broker=True, sampler=False)
    p.add_argument("--nodes", type=int, default=16, metavar="N", help="fleet size (default 16)")
    p.add_argument("--gpus-per-node", type=int, default=8, metavar="N", help="0 to 64 (default 8)")
    p.add_argument("--seed", type=int, default=0, help="profile seed (default 0)")
    p.add_argument(
        "--ticks", type=int, metavar="N", help="stop after N ticks (default: run until stopped)"
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--burst",
        action="store_true",
        help="do not wait between ticks (timestamps still step by --interval)",
    )
    pace.add_argument(
        "--spread",
        action="store_true",
        help="each node publishes at its own phase of the interval, as a real fleet's agents "
        "do (default: every node at the start of each interval, all at once)",
    )
    p.add_argument(
        "--first-index",
        type=int,
        default=0,
        metavar="I",
        help="number node ids from this index (several simulators side by side)",
    )
    p.add_argument("--json", action="store_true", help="print the run's figures as JSON at the end")
    p.set_defaults(handler=simulate)


def simulate(args: argparse.Namespace) -> int:
    """Publish the fleet until --ticks or a signal, then print the run's figures."""
    import asyncio  # noqa: PLC0415

    import aiomqtt  # noqa: PLC0415

    from agent.simulate import NODE_INDEXES, FleetSimulator, publish_fleet  # noqa: PLC0415
    from shared.schema import MAX_GPUS  # noqa: PLC0415 (msgspec: not for --help)

    if args.nodes < 1 or args.nodes > 200_000:
        raise CapwatchError(f"--nodes {args.nodes}: use 1 to 200000")
    if not 0 <= args.gpus_per_node <= MAX_GPUS:
        raise ConfigError(
            f"--gpus-per-node {args.gpus_per_node}: use 0 to {MAX_GPUS} "
            "(the wire schema's GPUs per node)",
            field="--gpus-per-node",
        )
    last = NODE_INDEXES - args.nodes
    if not 0 <= args.first_index <= last:
        raise ConfigError(
            f"--first-index {args.first_index}: use 0 to {last} with --nodes {args.nodes} (a "
            "node's index is its GPU UUIDs' first 8 hex digits)",
            field="--first-index",
        )
    if args.ticks is not None and args.ticks < 0:
        raise ConfigError(
            f"--ticks {args.ticks}: use 0 or more (leave it out to run until stopped)",
            field="--ticks",
        )
    settings = settings_from_args(args)
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
            spread=args.spread,
            stop=stop,
            client_id=f"capwatch-simulator-{args.first_index}",
        )
        figures = {
            "nodes": args.nodes,
            "ticks": stats.ticks,
            "published": stats.published,
            "late_ticks": stats.late_ticks,
            "max_late_s": round(stats.extra.get("max_late_s", 0.0), 3),
            "elapsed_s": round(stats.elapsed_s, 3),
            "samples_per_s": round(stats.published / stats.elapsed_s, 1)
            if stats.elapsed_s
            else None,
        }
        if args.json:
            print(json.dumps(figures))
        else:
            print(" ".join(f"{k}={v}" for k, v in figures.items()))

    try:
        asyncio.run(go())
    except BaseException as exc:
        mqtt_error = first_error(exc, aiomqtt.MqttError)
        if mqtt_error is None:
            raise
        raise _broker_error(mqtt_error, settings.mqtt) from exc
    return 0


def _broker_error(exc: aiomqtt.MqttError, mqtt: MqttSettings) -> CapwatchError:
    """One line for the user: refused credentials exit 2 (fix the settings), anything else
    about the broker (unreachable, connection lost) exits 1."""
    from agent.publisher import refused_credentials  # noqa: PLC0415

    broker = f"{mqtt.host}:{mqtt.port}"
    if refused_credentials(exc):
        return ConfigError(
            f"the MQTT broker at {broker} refused the credentials ({exc}): check the "
            f"settings mqtt.username (now {mqtt.username!r}) and mqtt.password "
            "(CAPWATCH_MQTT__USERNAME, CAPWATCH_MQTT__PASSWORD)",
            field="mqtt.password",
        )
    error = MqttConnectError(
        f"MQTT broker at {broker}: {exc}: check mqtt.host and mqtt.port (--host, --port) "
        "and that the broker is running"
    )
    error.exit_code = 1  # not the user's flags necessarily: the broker may come back
    return error
