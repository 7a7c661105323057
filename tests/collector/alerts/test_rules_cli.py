"""``collector rules``: the rules in force and how often they are evaluated."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

from collector.cli import main as collector_main


def test_rules_are_evaluated_every_second_at_the_shipped_defaults() -> None:
    """No settings: every second, so a breach reaches a receiver about a second after its
    route's ``group_wait`` (bench/bench_alert_latency.py measures it)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = collector_main(["rules", "--json"])
    assert code == 0, err.getvalue()
    shown = json.loads(out.getvalue())
    assert shown["eval_interval_s"] == 1.0
    assert "eval_interval_s" not in shown["changed_from_defaults"]
