"""``collector export``: the store's tenants, cohorts, quotas, pools and leases as TOML."""

from __future__ import annotations

import argparse
from typing import Final

from collector.cli import COMMANDS
from collector.cli._args import add_settings_args, read_settings_from_args
from collector.cli._render import print_json
from shared.errors import ConfigError

__all__ = ["add_parser", "run"]

_DESCRIPTION: Final = """\
Print the governance state in the shape `collector apply -f` reads (see `collector apply
--help`): keep it in git, edit it, apply it back. Pools are written by their nodes."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector export``."""
    p = sub.add_parser(
        "export",
        help=COMMANDS["export"][1],
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument("--json", action="store_true", help="the same document as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the state."""
    import tomli_w  # noqa: PLC0415

    from collector.governance.declare import export_spec  # noqa: PLC0415
    from collector.store.governance import governance  # noqa: PLC0415
    from collector.store.pools import pools_with_nodes  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    settings = read_settings_from_args(args)
    with StoreReader(settings.store_target) as store:
        if not store.has_table("leases"):
            raise ConfigError(
                f"{str(settings.store_target)!r} has no leases table yet: start this version's "
                "`collector run` once to migrate it"
            )
        gov = store.run(governance())
        pools = pools_with_nodes(store)
    doc = export_spec(gov, pools)
    if args.json:
        print_json(doc)
    else:
        print(tomli_w.dumps(doc), end="")
    return 0
