"""``agent sample``: print one sample as JSON."""

from __future__ import annotations

import argparse
import math
import time

from agent.cli._args import (
    add_json_flag,
    add_settings_args,
    node_sampler,
    print_json,
    settings_from_args,
)
from shared.cli import seconds
from shared.errors import ConfigError

__all__ = ["add_parser", "sample"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``agent sample``."""
    p = sub.add_parser(
        "sample",
        help="print one sample as JSON and exit",
        description="Take a priming reading, wait --wait seconds so rates (CPU %, "
        "bytes/s, interval power) have a baseline, then print one sample.",
    )
    add_settings_args(p, broker=False)
    p.add_argument(
        "--wait",
        type=seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between the priming and the printed reading, 0 to 3600 (default 1; 0: "
        "rates null)",
    )
    add_json_flag(p)
    p.set_defaults(handler=sample)


def sample(args: argparse.Namespace) -> int:
    """Start the sampler, prime the rates, print one sample."""
    from shared.schema import MAX_INTERVAL_S  # noqa: PLC0415 (msgspec: not for --help)

    if not (math.isfinite(args.wait) and 0 <= args.wait <= MAX_INTERVAL_S):
        raise ConfigError(
            f"--wait {args.wait!r}: use 0 to {MAX_INTERVAL_S:g} seconds", field="--wait"
        )
    settings = settings_from_args(args)
    sampler = node_sampler(settings)
    sampler.start()
    try:
        if args.wait > 0:
            sampler.sample()
            time.sleep(args.wait)
        print_json(sampler.sample())
    finally:
        sampler.close()
    return 0
