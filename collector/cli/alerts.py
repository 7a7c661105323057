"""``collector alerts``: what the built-in rules found, from the store (works while it runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector.paths import StoreTarget

import argparse
import json
import time
from typing import Any, Final

from collector.cli import COMMANDS
from collector.cli._args import (
    add_settings_args,
    read_settings_from_args,
    refuse_other_actions_flags,
)
from collector.cli._render import Column, print_json, render_table
from shared.durations import parse_duration
from shared.errors import ConfigError
from shared.units import format_duration

__all__ = ["add_parser", "run"]

_MAX_LIMIT: Final = 1_000_000
"""--limit above this is a typo (and past SQLite's integers, an error)."""
_LIMIT_DEFAULT: Final = 200
"""--history and --dead-letters without --limit: at most this many rows (the plain list of
alerts: all of them)."""

_DESCRIPTION: Final = """\
The alerts of the built-in rules (see `collector rules`), as the collector recorded them.

  (no option)     firing and pending alerts: state, since when, labels, silenced, summary
  --history       alerts that went firing, and their resolutions, since --since (default
                  24h); a pending alert that went away without firing is not history
  --dead-letters  webhook notifications given up on: receiver, alert, last status, error
  --redeliver ID  send dead letter ID again (the collector picks it up within ~10 s)
  --limit N       at most N rows: alerts (longest-standing first; default all), history
                  changes or dead letters (newest first; default 200)

Rules are evaluated every alerts.eval_interval_s (default 1 s) on the collector's live view
of the fleet; an alert is pending while its condition has held less than the rule's `for`,
firing after that, and resolved once the condition has been gone for `keep_firing_for`.
Firing and resolved alerts are sent, grouped by the [[routes]] (default: every receiver,
grouped by alertname), to the [[receivers]] webhooks as Alertmanager's JSON; silenced
alerts (`collector silence`) and those of a node with NodeOffline firing are not. Retried
on 5xx, 429, timeouts and connection errors for up to the receiver's max_age_s, then kept
as dead letters. --redeliver is the one option that writes to the store (one row, see
collector/store/outbox.py)."""

_EPILOG: Final = """\
examples:
  collector alerts
  collector alerts --history --since 1h --json
  collector alerts --dead-letters
  collector alerts --redeliver 42

exit status: 0 answered; 2 a bad flag or setting, or no database (one line)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``collector alerts``."""
    p = sub.add_parser(
        "alerts",
        help=COMMANDS["alerts"][1],
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_args(p)
    p.add_argument(
        "--history", action="store_true", help="firing and resolved changes instead of alerts"
    )
    p.add_argument("--since", metavar="DURATION", help="with --history: how far back (default 24h)")
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help=f"at most N alerts (default all), or N --history changes or --dead-letters "
        f"(default {_LIMIT_DEFAULT})",
    )
    p.add_argument("--dead-letters", action="store_true", help="webhook notifications given up on")
    p.add_argument(
        "--redeliver", type=int, metavar="ID", help="send dead letter ID again (writes one row)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.set_defaults(handler=run)


def _labels(labels: dict[str, str]) -> str:
    skip = {"alertname", "severity", "node", "gpu"}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in skip)


def _mark_muted(
    rows: list[dict[str, Any]],
    in_force: list[dict[str, Any]],
    rules: str | None,
    now: float,
    kept: str | None = None,
) -> None:
    """Add ``silenced`` (bool), ``silenced_by`` (silence ids) and ``inhibited`` (by the
    inhibit rules the collector last recorded, ``rules``, with the firing alerts but those
    it recorded as only kept firing, ``kept``) to each alert, as the collector decides
    them."""
    from collector.alerts.route import parse_matcher  # noqa: PLC0415
    from collector.alerts.silence import (  # noqa: PLC0415
        DEFAULT_INHIBIT_RULES,
        Inhibitor,
        Silence,
        inhibit_rules_from_json,
    )

    active = [
        Silence(
            s["id"], tuple(parse_matcher(m) for m in s["matchers"]), s["starts_at"], s["ends_at"]
        )
        for s in in_force
    ]
    try:
        in_use = DEFAULT_INHIBIT_RULES if rules is None else inhibit_rules_from_json(rules)
    except ValueError:
        in_use = DEFAULT_INHIBIT_RULES
    try:
        only_kept = {str(f) for f in json.loads(kept)} if kept else set()
    except (TypeError, ValueError):
        only_kept = set()
    inhibitor = Inhibitor(
        in_use,
        (
            (a["fingerprint"], a["labels"])
            for a in rows
            if a["state"] == "firing" and a["fingerprint"] not in only_kept
        ),
    )
    for a in rows:
        by = [s.id for s in active if s.mutes(a["labels"], now)]
        a["silenced_by"] = by
        a["inhibited"] = inhibitor.inhibits(a["labels"], a["fingerprint"])
        a["silenced"] = bool(by) or a["inhibited"]


def _row(a: dict[str, Any], now: float) -> dict[str, Any]:
    labels = a["labels"]
    since = a.get("starts_at") or a.get("active_at") or a.get("at")
    return {
        **a,
        "alertname": a["rule"],
        "severity": labels.get("severity"),
        "node": labels.get("node"),
        "gpu": labels.get("gpu"),
        "age": None if since is None else now - since,
        "other": _labels(labels) or None,
        "summary": a["annotations"].get("summary"),
        "muted": _muted_text(a),
    }


def _muted_text(a: dict[str, Any]) -> str | None:
    if "silenced" not in a:
        return None
    if a["silenced_by"]:
        return "yes (" + ",".join(f"#{i}" for i in a["silenced_by"]) + ")"
    return "inhibited" if a["inhibited"] else "no"


def run(args: argparse.Namespace) -> int:
    """Print the alerts or their history."""
    from collector.alerts.silence import KEPT_SOURCES_KEY  # noqa: PLC0415
    from collector.store.queries import (  # noqa: PLC0415
        active_alerts,
        alert_history,
        meta_value,
        silences,
    )
    from collector.store.reader import StoreReader  # noqa: PLC0415

    settings = read_settings_from_args(args)
    asked = [
        flag
        for flag, given in (
            ("--history", args.history),
            ("--dead-letters", args.dead_letters),
            ("--redeliver", args.redeliver is not None),
        )
        if given
    ]
    if len(asked) > 1:
        raise ConfigError(
            f"{' and '.join(asked)}: give one (each is a question of its own)", field=asked[1]
        )
    if args.since is not None and not args.history:
        raise ConfigError(
            "--since goes with --history (how far back its changes go); without it the "
            "alerts shown are those pending or firing now",
            field="--since",
        )
    if args.limit is not None and not 1 <= args.limit <= _MAX_LIMIT:
        raise ConfigError(
            f"--limit must be between 1 and {_MAX_LIMIT:,}, got {args.limit}", field="--limit"
        )
    limit: int = args.limit or _LIMIT_DEFAULT
    if args.redeliver is not None:
        refuse_other_actions_flags(
            "alerts",
            "--redeliver",
            (("--limit", ("", "--history", "--dead-letters"), args.limit is not None),),
        )
        if not 0 < args.redeliver < 2**63:  # SQLite's INTEGER: a larger one is no row's ID
            raise ConfigError(
                f"no dead letter with id {args.redeliver}: pick one from "
                "`collector alerts --dead-letters`",
                field="--redeliver",
            )
        return _redeliver(settings.store_target, args.redeliver, as_json=args.json)
    if args.dead_letters:
        return _dead_letters(settings.store_target, limit, as_json=args.json)
    since_s = (
        86_400.0
        if args.since is None
        else parse_duration(args.since, field="--since", positive=True)
    )
    now = time.time()
    with StoreReader(settings.store_target) as store:
        if args.history:
            rows = alert_history(store, now - since_s, limit)
        else:
            rows = active_alerts(store)
            _mark_muted(
                rows,
                silences(store, now),
                meta_value(store, "inhibit_rules"),
                now,
                meta_value(store, KEPT_SOURCES_KEY),
            )  # over every alert: one cut by --limit may still inhibit one shown
    more = 0
    if not args.history and args.limit is not None:
        more = max(0, len(rows) - args.limit)
        rows = rows[: args.limit]
    if args.json:
        print_json({"history" if args.history else "alerts": rows})
        return 0
    table = [_row(a, now) for a in rows]
    if not table:
        print("no alert changes in that window" if args.history else "no alerts")
        return 0
    state = Column("state", "STATE", align_right=False)
    if args.history:
        state = Column("state", "NOW", align_right=False)
    columns = [
        *([Column("previous", "WAS", align_right=False)] if args.history else []),
        state,
        Column("age", "SINCE" if not args.history else "AGO", format_duration),
        Column("alertname", "ALERT", align_right=False),
        Column("severity", "SEVERITY", align_right=False),
        Column("node", "NODE", align_right=False),
        Column("gpu", "GPU"),
        Column("other", "LABELS", align_right=False),
        *([] if args.history else [Column("muted", "SILENCED", align_right=False)]),
        Column("summary", "SUMMARY", align_right=False),
    ]
    print(render_table(table, columns))
    if more:
        print(f"... and {more:,} more (--limit {args.limit})")
    return 0


def _redeliver(db: StoreTarget, outbox_id: int, *, as_json: bool = False) -> int:
    from collector.store.outbox import request_redelivery  # noqa: PLC0415

    request_redelivery(db, outbox_id, time.time())
    if as_json:
        print_json({"id": outbox_id, "pending": True})
        return 0
    print(f"dead letter {outbox_id} is pending again: the collector sends it within ~10 s")
    return 0


def _dead_letters(db: StoreTarget, limit: int, *, as_json: bool) -> int:
    from collector.store.queries import dead_letters  # noqa: PLC0415
    from collector.store.reader import StoreReader  # noqa: PLC0415

    now = time.time()
    with StoreReader(db) as store:
        rows = dead_letters(store, limit)
    if as_json:
        print_json({"dead_letters": rows})
        return 0
    if not rows:
        print("no dead letters")
        return 0
    for r in rows:
        r["age"] = now - r["created"]
        r["alert"] = f"{r['rule']} {r['status']} {r['fingerprint']}"
        r["error"] = r["last_error"] or ""
        if r["response_head"]:
            r["error"] = f"{r['error']}: {r['response_head'][:60]}"
    columns = [
        Column("id", "ID"),
        Column("receiver", "RECEIVER", align_right=False),
        Column("alert", "ALERT", align_right=False),
        Column("last_status", "STATUS"),
        Column("attempts", "TRIES"),
        Column("age", "AGE", format_duration),
        Column("error", "ERROR", align_right=False),
    ]
    print(render_table(rows, columns))
    return 0
