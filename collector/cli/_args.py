"""Arguments every store-reading or daemon command shares, and settings built from them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from collector.settings import CollectorSettings
from shared.settings import load_settings

__all__ = ["add_settings_args", "settings_from_args"]


def add_settings_args(parser: argparse.ArgumentParser, *, broker: bool = False) -> None:
    """``--config`` and ``--db`` (and broker flags for commands that connect)."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML settings file (keys as in deploy/collector.toml.example); "
        "CAPWATCH_* environment variables override it, flags override both",
    )
    parser.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help="SQLite database (default: capwatch.db; env CAPWATCH_DB_PATH)",
    )
    if broker:
        parser.add_argument("--host", metavar="HOST", help="MQTT broker host (default 127.0.0.1)")
        parser.add_argument(
            "--port", type=int, metavar="PORT", help="MQTT broker port (default 1883)"
        )
        parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
        parser.add_argument(
            "--log-json",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="JSON log lines (default: when stderr is not a terminal)",
        )


def settings_from_args(args: argparse.Namespace, **extra: Any) -> CollectorSettings:
    """Settings from file + env + the flags present in ``args`` (plus ``extra`` overrides)."""
    overrides: dict[str, Any] = {
        "db_path": getattr(args, "db", None),
        "log_level": getattr(args, "log_level", None),
        "log_json": getattr(args, "log_json", None),
        "mqtt": {"host": getattr(args, "host", None), "port": getattr(args, "port", None)},
        **extra,
    }
    return load_settings(CollectorSettings, config_file=args.config, overrides=overrides)
