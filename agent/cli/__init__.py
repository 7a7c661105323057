"""``agent``: the node agent's command line.

This module only builds the parser and dispatches; each command lives in its own module
with an ``add_parser(subparsers)`` function that sets ``handler=<callable(args) -> int>``.
Command modules import nothing heavy at module level (settings, NVML, MQTT, the fake NVML,
the simulator), so ``agent --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.cli import run_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full ``agent`` argument parser."""
    from agent.cli import inventory, run, sample, simulate  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="agent",
        description="capwatch node agent: samples CPU, memory, disks, network, RAPL and NVIDIA "
        "GPUs (NVML) and publishes them over MQTT.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parser(sub)
    sample.add_parser(sub)
    inventory.add_parser(sub)
    simulate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agent`` console script."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
