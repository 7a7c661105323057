"""``agent inventory``: print this node's inventory as JSON."""

from __future__ import annotations

import argparse

from agent.cli._args import (
    add_json_flag,
    add_settings_args,
    node_sampler,
    print_json,
    settings_from_args,
)

__all__ = ["add_parser", "inventory"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``agent inventory``."""
    p = sub.add_parser(
        "inventory",
        help="print this node's inventory as JSON and exit",
        description="Start the GPU backend, describe this node (CPUs, memory, GPUs with "
        "their UUIDs, serials and power limits, NICs, other accelerators) and print it as "
        "the JSON inventory `agent run` publishes, retained, on "
        "capwatch/v1/nodes/<node>/inventory. Publishes nothing.",
    )
    add_settings_args(p, broker=False, interval=False)
    add_json_flag(p)
    p.set_defaults(handler=inventory)


def inventory(args: argparse.Namespace) -> int:
    """Start the sampler (GPU backend included) and print what it found."""
    settings = settings_from_args(args)
    sampler = node_sampler(settings)
    try:
        print_json(sampler.start())
    finally:
        sampler.close()
    return 0
