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
