"""``collector rules``: the alert rules in force, their thresholds and timings."""

from __future__ import annotations

import argparse
from typing import Any, Final

from collector.cli import COMMANDS
from collector.cli._args import add_settings_args
from collector.cli._render import Column, print_json, render_table

__all__ = ["add_parser", "run"]

_DESCRIPTION: Final = """\
The built-in alert rules with the thresholds in force: the defaults, changed by the
[alerts] table of the --config file or CAPWATCH_ALERTS__* variables (e.g.
CAPWATCH_ALERTS__GPU_TEMP_C=90). `for` is how long a condition must hold before the alert
fires; `keep firing` how long it stays firing after the condition is gone."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector rules``."""
    p = sub.add_parser(
        "rules",
        help=COMMANDS["rules"][1],
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the rules in force."""
    from collector.alerts.builtin import builtin_rules  # noqa: PLC0415
    from collector.alerts.settings import AlertSettings  # noqa: PLC0415
    from collector.cli._args import settings_from_args  # noqa: PLC0415

    settings = settings_from_args(args)
    defaults = AlertSettings().model_dump()
    changed = {k: v for k, v in settings.alerts.model_dump().items() if defaults.get(k) != v}
    rules = builtin_rules(settings.alerts, settings.staleness())
    rows: list[dict[str, Any]] = [
        {
            "name": r.name,
            "severity": r.severity,
            "for_s": r.for_s,
            "keep_firing_for_s": r.keep_firing_for_s,
            "summary": r.summary,
            "source": "built-in",
        }
        for r in rules
    ]
    if settings.capacity.plan is not None:
        from collector.capacity.job import CapacityState  # noqa: PLC0415
        from collector.capacity.rules import capacity_rules  # noqa: PLC0415

        rows.extend(
            {
                "name": r.name,
                "severity": r.severity,
                "for_s": r.for_s,
                "keep_firing_for_s": r.keep_firing_for_s,
                "summary": r.summary,
                "source": f"capacity ({settings.capacity.plan})",
            }
            for r in capacity_rules(CapacityState(), settings.capacity)
        )
    from collector.governance.job import GovernanceView  # noqa: PLC0415
    from collector.governance.rules import governance_rules  # noqa: PLC0415

    rows += [
        {
            "name": r.name,
            "severity": r.severity,
            "for_s": r.for_s,
            "keep_firing_for_s": r.keep_firing_for_s,
            "summary": r.summary,
            "source": "governance",
        }
        for r in governance_rules(GovernanceView, settings.governance)
    ]
    if args.json:
        print_json(
            {
                "rules": rows,
                "eval_interval_s": settings.alerts.eval_interval_s,
                "settings": settings.alerts.model_dump(),
                "changed_from_defaults": changed,
            }
        )
        return 0
    print(
        render_table(
            rows,
            [
                Column("name", "RULE", align_right=False),
                Column("severity", "SEVERITY", align_right=False),
                Column("for_s", "FOR", lambda v: f"{v:g}s"),
                Column("keep_firing_for_s", "KEEP FIRING", lambda v: f"{v:g}s"),
                Column("summary", "SUMMARY", align_right=False),
            ],
        )
    )
    print(f"\nevaluated every {settings.alerts.eval_interval_s:g} s")
    if changed:
        print(
            "changed from the defaults: "
            + ", ".join(f"alerts.{k} = {v!r}" for k, v in changed.items())
        )
    else:
        print("all thresholds at their defaults (collector rules --json lists them)")
    return 0
