"""``agent sample``: print one sample as JSON."""

from __future__ import annotations

import argparse
import time

from agent.cli._args import add_settings_args, node_sampler, print_json, settings_from_args

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
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between the priming and the printed reading (default 1; 0: rates null)",
    )
    p.set_defaults(handler=sample)


def sample(args: argparse.Namespace) -> int:
    """Start the sampler, prime the rates, print one sample."""

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
