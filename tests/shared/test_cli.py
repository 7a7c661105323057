"""The command-line runner: capwatch errors are one line with their exit code, never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from shared.cli import run_command
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
