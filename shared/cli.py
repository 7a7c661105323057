"""What both command lines share: running a subcommand with capwatch's exit-code rules."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TypeVar

from shared.errors import CapwatchError
from shared.text import UNSHOWN_RE, shortened

__all__ = [
    "add_broker_args",
    "add_log_args",
    "add_web_config_arg",
    "first_error",
    "first_named",
    "run_command",
    "shown",
]

_E = TypeVar("_E", bound=BaseException)


def add_broker_args(parser: argparse.ArgumentParser) -> None:
    """``--host`` and ``--port``: where the MQTT broker is (both programs)."""
    parser.add_argument("--host", metavar="HOST", help="MQTT broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, metavar="PORT", help="MQTT broker port (default 1883)")


def add_log_args(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-json`` (both daemons)."""
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="least severe log lines written (default info; env CAPWATCH_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: when stderr is not a terminal)",
    )


def add_web_config_arg(parser: argparse.ArgumentParser) -> None:
    """``--web-config-file``: TLS and basic auth for a daemon's /metrics (both daemons)."""
    parser.add_argument(
        "--web-config-file",
        type=Path,
        metavar="FILE",
        help="TLS and basic auth for that server: Prometheus exporter-toolkit's web config "
        "(tls_server_config, basic_auth_users with bcrypt hashes), as node_exporter's "
        "--web.config.file (env CAPWATCH_WEB_CONFIG_FILE)",
    )


def seconds(text: str) -> float:
    """argparse type of a flag given in seconds (``--interval SECONDS``): a number; '5m' or
    '5 minutes' is refused saying so (argparse's own line was 'invalid float value')."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"give seconds as a number (300 for 5 minutes), got {text!r}"
        ) from None


def first_error(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first ``kind`` in ``exc``, looking inside (nested) exception groups.

    A service's ``asyncio.TaskGroup`` wraps what its tasks raise in an ``ExceptionGroup``;
    a bad setting (a :class:`CapwatchError`) or a broker's refusal found inside it must still
    reach the user as one line and its exit code.
    """
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_error(inner, kind)
            if found is not None:
                return found
    return None


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and call the chosen subcommand's ``handler``.

    Exit codes: the handler's own; the error's ``exit_code`` with one line on stderr for a
    capwatch error (2 for a bad setting, a missing database, an invalid plan; 1 for a store
    that cannot be written): never a traceback, also when raised inside a task group; 130 on
    Ctrl-C.
    """
    args, unknown = parser.parse_known_args(_negative_values_joined(parser, argv))
    if unknown:
        # parse_args reports them from the top-level parser: 'usage: collector [-h]
        # COMMAND ...' and 'collector: error: ...', naming neither the command nor its flags.
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `collector query | head`: the reader left. Not an error; no traceback at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except BaseException as exc:
        error = first_error(exc, CapwatchError)
        if error is None:
            raise
        print(shortened(f"{parser.prog} {args.command}: error: {error}"), file=sys.stderr)
        return error.exit_code
    return code


_NEGATIVE: Final = re.compile(r"-\.?[0-9]")
"""A value that starts like a negative number (``-5m``, ``-1.5h``, ``-.5``)."""


def _negative_values_joined(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> list[str]:
    """``argv`` with ``FLAG -5m`` written ``FLAG=-5m`` where ``FLAG`` takes one value in the
    (sub)command it is given to: argparse took ``-5m`` for an option and said only 'expected
    one argument'; as ``--since=-5m`` the flag gets it, and refuses it in its own words
    (:mod:`shared.durations`: "durations cannot be negative"). argparse reads ``-5`` alone
    as a number already; this leaves it so."""
    words = list(sys.argv[1:] if argv is None else argv)
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        out.append(word)
        i += 1
        if word == "--":
            out += words[i:]
            break
        action = parser._option_string_actions.get(word)
        if action is not None:
            if action.nargs is None and i < len(words) and _NEGATIVE.match(words[i]):
                out[-1] = f"{word}={words[i]}"
                i += 1
            continue
        sub = _subcommand(parser, word)
        if sub is not None and not word.startswith("-"):
            parser = sub
    return out


def _subcommand(parser: argparse.ArgumentParser, word: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(word)
            if isinstance(chosen, argparse.ArgumentParser):
                return chosen
    return None


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand's parser that ``args`` went through (``parser`` itself if none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest or "", None) or "")
            if isinstance(chosen, argparse.ArgumentParser):
                return _chosen(chosen, args)
    return parser


def first_named(names: Sequence[str], most: int) -> str:
    """The first ``most`` of ``names``, comma-separated, then how many more (``a, b and 3
    more``): a list of nodes or models cut to fit one line of a message."""
    more = len(names) - most
    return ", ".join(names[:most]) + (f" and {more} more" if more > 0 else "")


def shown(text: str) -> str:
    """``text`` as a terminal shows it safely: control, other non-printable and invisible
    characters (ANSI escapes, newlines, bidi overrides, the Hangul fillers and blanks a name
    may not hold, :data:`shared.text.UNSHOWN`) written as ``\\x1b``, ``\\n``, ``\\u202e``,
    ``\\u3164``: two names that differ only by those look different.

    The collector's tables show every cell through it (``collector/cli/_render.py``), and
    ``collector query --rejected`` the heads of quarantined messages; use it too for names
    printed outside a table. Idempotent: what it returns is printable.
    """
    if text.isprintable() and UNSHOWN_RE.search(text) is None:
        return text
    return "".join(
        c
        if c.isprintable() and UNSHOWN_RE.match(c) is None
        else c.encode("unicode_escape").decode()
        for c in text
    )
