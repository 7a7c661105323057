"""``collector run``: the daemon."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from collector.cli._args import add_settings_args, settings_from_args
from collector.service import Collector
from collector.settings import CollectorSettings
from shared.logging import configure_logging
from shared.units import parse_duration

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector run``."""
    p = sub.add_parser(
        "run",
        help="run the collector daemon",
        description=(
            "Subscribe to capwatch/v1/nodes/+/{sample,inventory,status} with a persistent "
            "session (fixed client id, QoS 1) so the broker keeps samples while the collector "
            "restarts; validate every message; store samples in SQLite in batches; delete raw "
            "samples past the retention window. SIGTERM/SIGINT stop it cleanly: everything "
            "received is committed first."
        ),
    )
    add_settings_args(p, broker=True)
    p.add_argument("--client-id", metavar="ID", help="MQTT client id (default capwatch-collector)")
    p.add_argument("--retention", metavar="DURATION", help="keep raw samples this long (e.g. 24h)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build settings, then run until a signal."""
    extra: dict[str, Any] = {"client_id": args.client_id}
    if args.retention is not None:
        extra["retention_s"] = parse_duration(args.retention, field="--retention")
    settings = settings_from_args(args, **extra)
    configure_logging(settings.log_level, json=settings.log_json)
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: CollectorSettings) -> None:
    collector = Collector(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, collector.stop)
    await collector.run()
