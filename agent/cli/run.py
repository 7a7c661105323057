"""``agent run``: the daemon."""

from __future__ import annotations

import argparse
import signal

from agent.cli._args import add_settings_args, node_sampler, settings_from_args
from shared.cli import add_web_config_arg

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``agent run``."""
    p = sub.add_parser(
        "run",
        help="sample and publish every interval until stopped",
        description="Publish one sample per interval on capwatch/v1/nodes/<node>/"
        "sample (QoS 1), a retained inventory and online status; the broker's "
        "last will marks the node offline. Every sample is first appended to an on-disk "
        "spool and leaves it once the broker acknowledged it: while the broker is away, "
        "samples wait there (a day by default, across agent restarts and reboots) and are "
        "sent in order later.",
    )
    add_settings_args(p, broker=True)
    p.add_argument(
        "--buffer",
        metavar="DURATION",
        help="how old a spooled sample may get before it is dropped (default 1d; env "
        "CAPWATCH_BUFFER_S)",
    )
    p.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="on-disk spool directory (default: $STATE_DIRECTORY under systemd, else "
        "$XDG_STATE_HOME/capwatch-agent, else ~/.local/state/capwatch-agent; env "
        "CAPWATCH_SPOOL_DIR)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus: dcgm-exporter's GPU names, node_exporter's host "
        "names), /healthz and /readyz here, e.g. 0.0.0.0:9400 (default: off; env "
        "CAPWATCH_METRICS_LISTEN)",
    )
    p.add_argument(
        "--dcgm-hostname-label",
        choices=["Hostname", "hostname"],
        help="spelling of dcgm-exporter's host label on the DCGM_FI_* series: Hostname "
        "(default, its releases) or hostname (its main branch; env "
        "CAPWATCH_DCGM_HOSTNAME_LABEL)",
    )
    p.add_argument(
        "--metrics-advertise",
        metavar="HOST:PORT",
        help="where Prometheus reaches that server, announced in the inventory for the "
        "collector's service discovery (default: the listen host, or this node's FQDN when "
        "it listens on all addresses, and the listen port; env CAPWATCH_METRICS_ADVERTISE)",
    )
    add_web_config_arg(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build settings (a bad one or a bad TLS file: ConfigError), then run until a signal."""
    import asyncio  # noqa: PLC0415
    import os  # noqa: PLC0415

    from agent.service import AgentService  # noqa: PLC0415
    from agent.settings import default_spool_dir  # noqa: PLC0415
    from shared.durations import parse_duration  # noqa: PLC0415
    from shared.sdnotify import SdNotifier  # noqa: PLC0415

    extra: dict[str, object] = {}
    if args.buffer is not None:
        extra["buffer_s"] = parse_duration(args.buffer, field="--buffer")
    if args.metrics_listen is not None:
        extra["metrics_listen"] = args.metrics_listen
    if args.spool_dir is not None:
        extra["spool_dir"] = args.spool_dir
    if args.web_config_file is not None:
        extra["web_config_file"] = args.web_config_file
    if args.dcgm_hostname_label is not None:
        extra["dcgm_hostname_label"] = args.dcgm_hostname_label
    if args.metrics_advertise is not None:
        extra["metrics_advertise"] = args.metrics_advertise
    settings = settings_from_args(args, **extra)
    if settings.spool_dir is None:
        settings = settings.model_copy(update={"spool_dir": default_spool_dir(os.environ)})
    notifier = SdNotifier.from_environ(os.environ, os.getpid())
    service = AgentService(settings, node_sampler(settings), notifier=notifier)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    asyncio.run(serve())
    return 0
