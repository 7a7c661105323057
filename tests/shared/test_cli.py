"""The command-line runner: capwatch errors are one line with their exit code, never a traceback."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli import main as agent_main
from collector.cli import main as collector_main
from shared import schema
from shared.cli import run_command, shown
from shared.errors import ConfigError, StoreError


def _parser(handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collector")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run").set_defaults(handler=handler)
    return parser


def _raises(exc: BaseException) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("setting 'x' is wrong: fix it", field="x"), 2),
        (StoreError("storing a batch failed: disk full", exit_code=1), 1),
        # As a service's TaskGroup delivers them, nested too:
        (ExceptionGroup("tasks", [ConfigError("setting 'x' is wrong: fix it")]), 2),
        (
            ExceptionGroup(
                "outer",
                [
                    ValueError("noise"),
                    ExceptionGroup("inner", [StoreError("disk full", exit_code=1)]),
                ],
            ),
            1,
        ),
    ],
)
def test_capwatch_errors_are_one_line_with_their_exit_code(
    capsys: pytest.CaptureFixture[str], error: BaseException, code: int
) -> None:
    """Also from inside (nested) exception groups."""
    assert run_command(_parser(_raises(error)), ["run"]) == code
    err = capsys.readouterr().err
    assert err.startswith("collector run: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_other_errors_are_not_swallowed() -> None:
    """A bug is a bug: it propagates (with its traceback) rather than hiding as exit 2."""
    with pytest.raises(ExceptionGroup):
        run_command(_parser(_raises(ExceptionGroup("tasks", [ValueError("bug")]))), ["run"])


def test_every_option_of_both_programs_says_what_it_does() -> None:
    """`--help` is the manual: an option without a help line (--log-level, quota --resource
    once) showed its choices but neither its meaning nor its default."""
    from agent.cli import build_parser as agent_parser  # noqa: PLC0415
    from collector.cli import build_parser as collector_parser  # noqa: PLC0415

    silent = []
    for program in (agent_parser(), collector_parser()):
        for sub in program._subparsers._group_actions:  # type: ignore[union-attr]
            assert isinstance(sub, argparse._SubParsersAction)
            for name, command in sub.choices.items():
                silent += [
                    f"{program.prog} {name} {a.option_strings[0]}"
                    for a in command._actions
                    if a.option_strings and a.help is None
                ]
    assert silent == []


def test_every_command_of_both_programs_says_what_it_does_in_its_help() -> None:
    """`agent inventory --help` once showed its usage and options and not a word of what it
    does: the one line was in `agent --help` only."""
    from agent.cli import build_parser as agent_parser  # noqa: PLC0415
    from collector.cli import build_parser as collector_parser  # noqa: PLC0415

    silent = [
        f"{program.prog} {name}"
        for program in (agent_parser(), collector_parser())
        for sub in program._subparsers._group_actions  # type: ignore[union-attr]
        if isinstance(sub, argparse._SubParsersAction)
        for name, command in sub.choices.items()
        if not (command.description or "").strip()
    ]
    assert silent == []


# Characters that print as nothing or as a blank: the Hangul fillers (U+115F, U+1160, U+3164,
# U+FFA0, Default_Ignorable_Code_Point in Unicode's DerivedCoreProperties.txt), the Braille
# pattern with no dots (U+2800) and the musical null notehead (U+1D159).
_BLANKS = "\u115f\u1160\u3164\uffa0\u2800\U0001d159"


@pytest.mark.parametrize("blank", _BLANKS)
def test_shown_escapes_what_prints_as_nothing(blank: str) -> None:
    """Pool "gpu" and pool "gpu" + U+3164 looked the same in a table: str.isprintable()
    says a Hangul filler or a Braille blank is printable, and `shown` left it raw."""
    name = f"gpu{blank}"
    assert shown(name) != shown("gpu")
    assert shown(name) == "gpu" + blank.encode("unicode_escape").decode()
    assert shown(shown(name)) == shown(name)  # idempotent: the escape is printable


def test_shown_escapes_every_character_a_name_may_not_hold() -> None:
    """One rule: whatever the wire schema refuses inside a user name as not showing as
    itself (shared/schema.py), `shown` escapes, and the reverse for printable text."""
    user = re.compile(schema.USER_PATTERN)
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        refused = user.match(f"a{c}b") is None
        raw = shown(c) == c
        assert not (refused and raw), f"U+{code:04X} is refused in a name but shown raw"
        if c.isprintable():
            assert raw or refused, f"U+{code:04X} is escaped but allowed in a name"


@pytest.mark.parametrize(
    ("program", "argv", "flag"),
    [
        ("collector", ["query", "--since", "-5m"], "--since"),
        ("collector", ["query", "--node", "n1", "--since", "-1.5h"], "--since"),
        ("collector", ["query", "--step", "-5m"], "--step"),
        ("collector", ["alerts", "--history", "--since", "-1h"], "--since"),
        ("collector", ["plot", "capacity", "--since", "-1h"], "--since"),
        ("collector", ["silence", "add", "--match", "node=n1", "--for", "-2h"], "--for"),
        ("collector", ["run", "--retention", "-1d"], "--retention"),
        ("agent", ["run", "--buffer", "-1d"], "--buffer"),
    ],
)
def test_a_negative_duration_is_one_line_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, program: str, argv: list[str], flag: str
) -> None:
    """``--since -5m`` was argparse's 'expected one argument' (it took -5m for an option):
    the flag gets the value, and the duration grammar refuses it, naming the flag."""
    main = collector_main if program == "collector" else agent_main
    code = main([*argv, "--db", str(tmp_path / "none.db")] if program == "collector" else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert f"{flag} '-" in err
    assert "durations cannot be negative; write whole numbers with units" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["query", "--since", "0"],
        ["query", "--node", "n1", "--since", "0s"],
        ["alerts", "--history", "--since", "0s"],
        ["plot", "capacity", "--since", "0"],
        ["silence", "add", "--match", "node=n1", "--for", "0s"],
    ],
)
def test_a_zero_span_is_refused_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    """How far back a query looks and how long a silence lasts hold something: zero is an
    empty window, refused as plot's --since was (a setting bounds its own: retention_s)."""
    assert collector_main([*argv, "--db", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "must be longer than 0, e.g. 1h" in err
