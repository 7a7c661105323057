"""What the agent's commands share: settings flags, settings and sampler built from them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.cli import add_broker_args, add_log_args, seconds

if TYPE_CHECKING:
    from agent.node import NodeSampler
    from agent.settings import AgentSettings

__all__ = [
    "add_json_flag",
    "add_settings_args",
    "node_sampler",
    "print_json",
    "settings_from_args",
]


def add_settings_args(
    p: argparse.ArgumentParser, *, broker: bool, sampler: bool = True, interval: bool = True
) -> None:
    """``--config`` and logging flags; with ``sampler`` this node's id and GPU backend, with
    ``interval`` the sampling interval, with ``broker`` the broker's. A command is offered
    only the flags it uses: one it would ignore is refused by argparse, not dropped."""
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML settings file; CAPWATCH_* env vars override it, flags override both",
    )
    if interval:
        p.add_argument(
            "--interval",
            type=seconds,
            metavar="SECONDS",
            help="seconds between samples (default 5, at least 1)",
        )
    if sampler:
        _add_sampler_args(p)
    add_log_args(p)
    if broker:
        add_broker_args(p)


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    """This node's id and GPU backend: what ``run``, ``sample`` and ``inventory`` read."""
    p.add_argument(
        "--node-id",
        metavar="ID",
        help="node name used in topics (default: short hostname; letters, digits, . _ -)",
    )
    p.add_argument(
        "--gpu-backend",
        choices=["nvml", "fake", "none"],
        help="nvml (default: real GPUs via NVML), fake (simulated GPUs), none",
    )
    p.add_argument(
        "--fake-gpus", type=int, metavar="N", help="GPUs of the fake backend (default 8)"
    )
    p.add_argument(
        "--fake-mig",
        action="append",
        metavar="GPU=PROFILES",
        help="put a fake GPU in MIG mode with these GPU instance profiles, e.g. "
        "0=3g.40gb,2g.20gb,2g.20gb (once per GPU)",
    )


def settings_from_args(args: argparse.Namespace, **extra: Any) -> AgentSettings:
    """Settings from file + env + the flags in ``args`` (plus ``extra``); logging set up."""
    from agent.settings import AgentSettings  # noqa: PLC0415 (pydantic: not for --help)
    from shared.logging import configure_logging  # noqa: PLC0415
    from shared.settings import load_settings  # noqa: PLC0415

    fake_mig = getattr(args, "fake_mig", None)
    overrides: dict[str, Any] = {
        "node_id": getattr(args, "node_id", None),
        "interval_s": getattr(args, "interval", None),
        "gpu_backend": getattr(args, "gpu_backend", None),
        "fake_gpus": getattr(args, "fake_gpus", None),
        "fake_mig": ";".join(fake_mig) if fake_mig else None,
        "log_level": args.log_level,
        "log_json": args.log_json,
        "mqtt": {"host": getattr(args, "host", None), "port": getattr(args, "port", None)},
        **extra,
    }
    settings = load_settings(AgentSettings, config_file=args.config, overrides=overrides)
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


def node_sampler(settings: AgentSettings) -> NodeSampler:
    """The node sampler the settings describe, on the system clock (not started)."""
    from agent.service import build_sampler  # noqa: PLC0415 (NVML only when sampling)
    from shared.clock import SystemClock  # noqa: PLC0415

    return build_sampler(settings, SystemClock())


def add_json_flag(p: argparse.ArgumentParser) -> None:
    """``--json`` on a command whose only output is JSON: accepted, as every command that
    prints data accepts it (a script passes it to each), and changes nothing."""
    p.add_argument(
        "--json", action="store_true", help="print JSON (this command's only output format)"
    )


def print_json(obj: Any) -> None:
    """Print a wire-schema object as indented JSON."""
    from shared.schema import encode  # noqa: PLC0415

    print(json.dumps(json.loads(encode(obj)), indent=2))
