"""Arguments every store-reading or daemon command shares, and settings built from them.

Imported by ``collector --help`` paths, so nothing heavy at module level: the settings model
(pydantic, ~0.14 s of imports) is loaded only when settings must be validated.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from collector.paths import (
    DEFAULT_DB_PATH,
    PgTarget,
    StoreTarget,
    is_url,
    names_no_file,
    parse_target,
)
from shared.cli import add_broker_args, add_log_args

if TYPE_CHECKING:
    from collector.capacity.config import RackRule
    from collector.nodefacts import Staleness
    from collector.settings import CollectorSettings

__all__ = [
    "ReadSettings",
    "add_settings_args",
    "defaults_but_the_store",
    "node_names",
    "read_input",
    "read_settings_from_args",
    "refuse_other_actions_flags",
    "settings_from_args",
]

_ENV_PREFIX: Final = "CAPWATCH_"
_DB_PATH_ENV: Final = "CAPWATCH_DB_PATH"


def node_names(words: Iterable[str]) -> tuple[str, ...]:
    """Node names as the command line gives them: words, each a name or several separated by
    commas (``--nodes a,b``, ``pool add P a b,c``), blanks around a name dropped."""
    return tuple(n.strip() for word in words for n in word.split(",") if n.strip())


def refuse_other_actions_flags(
    command: str, action: str, given: Iterable[tuple[str, tuple[str, ...], bool]]
) -> None:
    """Refuse a flag meant for another action of ``command`` (``silence expire 3 --match``,
    ``lease list --pool P``): dropped without a word, it would read as a condition or a
    filter the answer obeyed. ``given``: (flag, the actions it goes with, whether given);
    an action ``""`` is the command alone (``alerts --limit``)."""
    from shared.errors import ConfigError  # noqa: PLC0415

    for flag, actions, present in given:
        if present and action not in actions:
            with_ = " or ".join(f"`{command} {a}`".replace(" `", "`") for a in actions)
            raise ConfigError(f"{flag} goes with {with_}, not {action}: leave it out", field=flag)


def read_input(name: str, *, field: str, label: str = "") -> bytes:
    """The bytes of the file ``name`` an operator gave a command (``-``: stdin), at most
    :data:`shared.files.MAX_FILE_BYTES`, read no further; :class:`ConfigError` naming
    ``field`` (its messages start with ``label``, e.g. the flag) when it cannot be read or
    is larger."""
    from shared.errors import ConfigError  # noqa: PLC0415
    from shared.files import FileTooLargeError, read_bounded  # noqa: PLC0415

    try:
        return read_bounded(sys.stdin.buffer if name == "-" else Path(name))
    except FileTooLargeError as exc:
        raise ConfigError(
            f"{label}{name!r} {exc}: split it into several files", field=field
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{label}cannot read {name!r}: {exc.strerror or exc}", field=field
        ) from None


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
        metavar="PATH|URL",
        help="the store: a SQLite file (default: capwatch.db; env CAPWATCH_DB_PATH) or "
        "postgresql://user@host:port/database (setting store.url; the password from "
        "PGPASSWORD, ~/.pgpass or store.password_file, never in the URL)",
    )
    if broker:
        add_broker_args(parser)
        add_log_args(parser)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> CollectorSettings:
    """Settings from file + env + the flags present in ``args`` (plus ``extra`` overrides)."""
    from collector.settings import CollectorSettings  # noqa: PLC0415 (pydantic: not for --help)
    from shared.settings import load_settings  # noqa: PLC0415

    db: str | None = getattr(args, "db", None)
    target = None if db is None else parse_target(db)
    overrides: dict[str, Any] = {
        "db_path": target if isinstance(target, Path) else None,
        "store": {"url": target.url} if isinstance(target, PgTarget) else None,
        "log_level": getattr(args, "log_level", None),
        "log_json": getattr(args, "log_json", None),
        **extra,
        "mqtt": {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            **extra.get("mqtt", {}),
        },
    }
    settings = load_settings(CollectorSettings, config_file=args.config, overrides=overrides)
    if isinstance(target, Path) and settings.store.url is not None:  # the flag wins
        settings = settings.model_copy(
            update={"store": settings.store.model_copy(update={"url": None})}
        )
    for line in settings.setting_warnings():  # stderr: stdout may be --json
        print(f"warning: {line}", file=sys.stderr)
    return settings


class ReadSettings(NamedTuple):
    """The part of :class:`~collector.settings.CollectorSettings` a store reader uses."""

    store_target: StoreTarget
    stale: Staleness
    """:meth:`CollectorSettings.staleness <collector.settings.CollectorSettings.staleness>`."""
    busy_util_pct: float
    """``[governance] busy_util_pct``: the utilisation at which a GPU is busy, as the
    collector counts it (``quota show`` reads the collector's figures only at the same)."""
    capacity_plan: Path | None = None
    """``[capacity] plan``: where the operator's racks are (``[[capacity.racks]]``)."""

    def staleness(self) -> Staleness:
        """When a node is stale (:mod:`collector.nodefacts`), as the settings say."""
        return self.stale

    def rack_rules(self) -> tuple[RackRule, ...]:
        """The operator's racks, for :func:`collector.nodefacts.rack_of` (none without a plan)."""
        from collector.capacity.config import rack_rules  # noqa: PLC0415

        return rack_rules(self.capacity_plan)


def defaults_but_the_store(args: argparse.Namespace) -> StoreTarget | None:
    """The store of settings that can only be the collector's defaults but for where the store
    is: no ``--config`` file, and no ``CAPWATCH_*`` variable but ``CAPWATCH_DB_PATH`` (in any
    case, as pydantic-settings matches it), which ``--db`` overrides. ``None``: anything else,
    or a value the settings model refuses (then its error is the settings model's own)."""
    if args.config is not None:
        return None
    env = [(k, v) for k, v in os.environ.items() if k.upper().startswith(_ENV_PREFIX)]
    if len(env) > 1 or any(k.upper() != _DB_PATH_ENV for k, _ in env):
        return None
    db: str | None = args.db
    if db is not None:
        return parse_target(db)  # the flag wins over the variable
    if not env:
        return DEFAULT_DB_PATH
    value = env[0][1]
    if is_url(value) or names_no_file(value):  # refused by the model: its error, then
        return None
    return Path(value)


def read_settings_from_args(args: argparse.Namespace) -> ReadSettings:
    """What a store-reading command needs, from ``--config``, ``CAPWATCH_*`` and ``--db``.

    Without a ``--config`` file and without any ``CAPWATCH_*`` environment variable (in any
    case, as pydantic-settings matches them) but ``CAPWATCH_DB_PATH`` there is nothing to
    validate but that path: the answer is the collector's defaults and the store, exactly what
    :func:`settings_from_args` would build, without its ~0.14 s of imports
    (tests/collector/test_cli_query.py holds the two equal). Otherwise the full settings are
    built and checked as for ``collector run``, with the same errors.
    """
    target = defaults_but_the_store(args)
    if target is not None:
        from collector.nodefacts import DEFAULT_BUSY_UTIL_PCT, DEFAULT_STALENESS  # noqa: PLC0415

        return ReadSettings(target, DEFAULT_STALENESS, DEFAULT_BUSY_UTIL_PCT)
    settings = settings_from_args(args)
    return ReadSettings(
        settings.store_target,
        settings.staleness(),
        settings.governance.busy_util_pct,
        settings.capacity.plan,
    )
