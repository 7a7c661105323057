"""``collector run``: the daemon."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from collector.cli._args import add_settings_args
from shared.cli import add_web_config_arg

if TYPE_CHECKING:
    from collector.settings import CollectorSettings

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector run``."""
    p = sub.add_parser(
        "run",
        help="run the collector daemon",
        description=(
            "Subscribe to capwatch/v1/nodes/# (samples, inventories, statuses) with a persistent "
            "session (QoS 1) so the broker keeps samples while the collector restarts; "
            "validate every message against the wire schema's physical bounds; store samples "
            "(in the SQLite file --db, or PostgreSQL when --db is a postgresql:// URL) and "
            "acknowledge each message only after the commit that stored it (SQLite with "
            "synchronous=FULL: it survives a power cut); quarantine and acknowledge what "
            "cannot be stored (see `collector query --rejected`); delete raw samples that "
            "arrived before the retention window. SIGTERM/SIGINT stop it cleanly: everything "
            "received is committed and acknowledged first. Exit 2: a setting is wrong (one "
            "line names it); exit 1: the database cannot be written (disk full, I/O error)."
        ),
    )
    add_settings_args(p, broker=True)
    p.add_argument(
        "--client-id",
        metavar="ID",
        help="MQTT client id of the persistent session (default: the MQTT username, else "
        "capwatch-collector; with --share-group capwatch-collector-<hostname>-<instance>)",
    )
    p.add_argument(
        "--share-group",
        metavar="NAME",
        help="run as one of several collectors: take samples through the MQTT shared "
        "subscription $share/NAME/capwatch/v1/nodes/+/sample (each sample goes to one member; "
        "Mosquitto 2, not NATS), inventories and statuses through plain ones; give each "
        "collector its own MQTT user (setting mqtt.share_group; default: unset, one collector)",
    )
    p.add_argument(
        "--instance",
        metavar="NAME",
        help="this collector's name among several on one host: part of its default client id "
        "and of its name in the leader election (setting instance; default 1)",
    )
    p.add_argument("--retention", metavar="DURATION", help="keep raw samples this long (e.g. 24h)")
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus: ingest health, fleet aggregates, alert counts; no "
        "per-GPU series), /healthz and /readyz here, e.g. 127.0.0.1:9474 (default: off)",
    )
    add_web_config_arg(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build settings, then run until a signal."""
    import asyncio  # noqa: PLC0415 (imports stay inside the command: --help is instant)

    from collector.cli._args import settings_from_args  # noqa: PLC0415
    from shared.durations import parse_duration  # noqa: PLC0415
    from shared.logging import configure_logging  # noqa: PLC0415

    extra: dict[str, Any] = {
        "client_id": args.client_id,
        "instance": args.instance,
        "mqtt": {"share_group": args.share_group},
    }
    if args.metrics_listen is not None:
        extra["metrics_listen"] = args.metrics_listen
    if args.web_config_file is not None:
        extra["web_config_file"] = args.web_config_file
    if args.retention is not None:
        extra["retention_s"] = parse_duration(args.retention, field="--retention")
    settings = settings_from_args(args, **extra)
    configure_logging(settings.log_level, json=settings.log_json)
    from collector import cooperate, heap  # noqa: PLC0415

    heap.configure()
    cooperate.configure()
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: CollectorSettings) -> None:
    import asyncio  # noqa: PLC0415
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from collector import heap  # noqa: PLC0415
    from collector.service import Collector  # noqa: PLC0415
    from shared.sdnotify import SdNotifier  # noqa: PLC0415

    notifier = SdNotifier.from_environ(os.environ, os.getpid())
    collector = Collector(settings, notifier=notifier)
    heap.freeze_startup()  # what was loaded to serve lives as long as the process
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, collector.stop)
    await collector.run()
