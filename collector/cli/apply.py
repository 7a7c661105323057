"""``collector apply -f cluster.toml [--dry-run]``: tenants, cohorts, quotas, pools, leases."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any, Final

from collector.cli import COMMANDS
from collector.cli._args import add_settings_args, read_input, read_settings_from_args
from collector.cli._render import print_json
from shared.errors import ConfigError

if TYPE_CHECKING:
    from collector.cli._args import ReadSettings
    from collector.governance.declare import ClusterSpec

__all__ = ["add_parser", "run"]

_DESCRIPTION: Final = """\
Make the store say what a TOML file says: cohorts (with their own quotas), tenants (cohort,
priority, quotas per resource), pools (by explicit nodes, or by a pattern planned as
`collector pool apply -p` plans it: fewest nodes, members first, leased nodes untouchable),
and leases. Applying the same file
twice changes nothing the second time; --dry-run prints the changes and writes nothing; a
bad file (unknown key, bad value, an overlapping lease, a lease beyond quota without
force_reason) changes nothing and names the key. What the file does not name is left as it
is, but a tenant or cohort it names gets exactly the file's quotas: one named without a
`quota` loses those it had (--dry-run shows them as `~ quota ... -> none`). `collector
export` writes the current state in this shape.

  [cohorts.research]
  quota = { gpus = 12 }
  [tenants.acme]
  cohort = "research"
  quota.gpus = { nominal = 9, borrowing_limit = 1, lending_limit = 2 }
  quota.gpu_hours = { nominal = 5000, period = "month" }
  [pools.acme-a]
  nodes = ["x1000c0s0b0n0", "x1000c0s0b0n1"]
  comment = "acme's training pool"   # optional: not given, the pool keeps its own
  [pools.zinal]
  pattern = "a100:4:epyc:30:memory:80"   # the terms; the pool's name is the table's
  [leases.acme-2026]
  tenant = "acme"
  pool = "acme-a"            # or nodes = [...]
  start = 2026-01-01
  duration_days = 180        # also term_days, notice_days, min_days, tz, auto_renew,
  notice_days = 90           # notice_given, force_reason, comment"""

_EPILOG: Final = """\
exit status: 0 applied (or nothing to do); 2 a bad file or flag, or no database (one line)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector apply``."""
    p = sub.add_parser(
        "apply",
        help=COMMANDS["apply"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="cluster.toml, or - (stdin)")
    p.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


def _read(name: str) -> dict[str, Any]:
    import tomllib  # noqa: PLC0415

    from shared.files import parse_toml  # noqa: PLC0415

    try:
        text = read_input(name, field="--file").decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name!r} is not UTF-8 text", field="--file") from None
    try:
        return parse_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}", field="--file") from None


def _plan_patterns(spec: ClusterSpec, settings: ReadSettings) -> dict[str, list[str]]:
    """Plan the pattern pools on a read snapshot (the solve never holds the write lock)."""
    from collector.cli.inventory import load_nodes  # noqa: PLC0415
    from collector.governance.declare import plan_patterns  # noqa: PLC0415
    from collector.store.pools import unended_lease_nodes  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    nodes = load_nodes(settings)
    with StoreReader(settings.store_target) as store:
        leased = unended_lease_nodes(store, time.time())
    return plan_patterns(spec, nodes, leased)


def run(args: argparse.Namespace) -> int:
    """Apply (or dry-run) the file."""
    from collector.governance.declare import apply_spec, parse_spec  # noqa: PLC0415
    from collector.store.command import Command  # noqa: PLC0415
    from collector.store.usage import node_hardware  # noqa: PLC0415

    settings = read_settings_from_args(args)
    spec = parse_spec(_read(args.file), source="stdin" if args.file == "-" else args.file)
    planned = _plan_patterns(spec, settings) if any(p.pattern for p in spec.pools.values()) else {}
    with Command(settings.store_target, now=time.time()) as tx:
        changes = apply_spec(tx, spec, tx.run(node_hardware(tx.dialect)), planned)
        if args.dry_run or not changes:
            tx.discard()
    if args.json:
        print_json({"dry_run": args.dry_run, "changes": changes})
        return 0
    if not changes:
        print("nothing to change: the store already says what the file says")
        return 0
    for line in changes:
        print(line)
    verb = "would change" if args.dry_run else "applied"
    print(f"{verb}: {len(changes)} change{'s' if len(changes) != 1 else ''}")
    return 0
