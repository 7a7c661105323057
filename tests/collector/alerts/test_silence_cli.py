"""``collector silence add|list|expire`` and the SILENCED column of ``collector alerts``."""

from __future__ import annotations

import json
import time

import pytest

from collector.alerts.fingerprint import fingerprint
from collector.paths import StoreTarget
from collector.store.alerts import AlertChange, write_alerts
from collector.store.db import Store
from tests.helpers import collector_cli


async def _store(db: StoreTarget, *alerts: dict[str, str]) -> StoreTarget:
    now = time.time()
    changes = [
        AlertChange(
            fingerprint(labels),
            labels["alertname"],
            json.dumps(labels),
            "{}",
            "inactive",
            "firing",
            now,
            now,
            now,
            None,
        )
        for labels in alerts
    ]
    async with Store(db) as store:
        await write_alerts(store, changes, 86_400.0, now=now)
    return db


HOT = {"alertname": "GpuTemperature", "node": "x1000c0", "gpu": "3", "severity": "warning"}
OTHER = {"alertname": "GpuTemperature", "node": "y2", "gpu": "0", "severity": "warning"}


async def test_add_list_expire(store_url: StoreTarget) -> None:
    """A silence is listed with its matchers until it is expired."""
    db = str(await _store(store_url))
    code, out, _ = collector_cli(
        "silence", "add", "--db", db, "--match", "alertname=GpuTemperature",
        "--match", "node=~x1000.*", "--for", "2h", "--comment", "row 3", "--author", "jdoe",
    )  # fmt: skip
    assert code == 0
    assert out.startswith("silence 1 added")
    code, out, _ = collector_cli("silence", "list", "--db", db, "--json")
    (s,) = json.loads(out)["silences"]
    assert (s["id"], s["matchers"], s["comment"], s["author"]) == (
        1,
        ["alertname=GpuTemperature", "node=~x1000.*"],
        "row 3",
        "jdoe",
    )
    assert s["ends_at"] - s["starts_at"] == 7200.0
    assert collector_cli("silence", "expire", "1", "--db", db)[0] == 0
    assert json.loads(collector_cli("silence", "list", "--db", db, "--json")[1])["silences"] == []
    assert (
        len(
            json.loads(collector_cli("silence", "list", "--all", "--db", db, "--json")[1])[
                "silences"
            ]
        )
        == 1
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--match", "node=~x[1", "--for", "1h"], "bad regular expression"),
        (["--match", "node", "--for", "1h"], "is not a matcher"),
        (["--match", "node=a", "--for", "soon"], "--for 'soon' is not a duration"),
        (["--for", "1h"], "at least one --match"),
    ],
)
async def test_a_bad_silence_is_one_line_exit_2(
    store_url: StoreTarget, args: list[str], message: str
) -> None:
    """A bad matcher or duration names the flag; nothing is stored."""
    db = str(await _store(store_url))
    code, _, err = collector_cli("silence", "add", "--db", db, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert json.loads(collector_cli("silence", "list", "--db", db, "--json")[1])["silences"] == []


async def test_expire_of_an_unknown_silence_is_exit_2(store_url: StoreTarget) -> None:
    """No such silence in force: one line, exit 2."""
    db = str(await _store(store_url))
    code, _, err = collector_cli("silence", "expire", "9", "--db", db)
    assert code == 2
    assert "no silence in force with id 9" in err


async def test_alerts_shows_silenced_and_inhibited(store_url: StoreTarget) -> None:
    """Silenced alerts still show, marked; NodeOffline marks its node's others inhibited."""
    offline = {"alertname": "NodeOffline", "node": "y2", "severity": "critical"}
    db = str(await _store(store_url, HOT, OTHER, offline))
    collector_cli("silence", "add", "--db", db, "--match", "node=~x1000.*", "--for", "1h")
    code, out, _ = collector_cli("alerts", "--db", db, "--json")
    assert code == 0
    got = {
        (a["rule"], a["labels"]["node"]): (a["silenced"], a["silenced_by"], a["inhibited"])
        for a in json.loads(out)["alerts"]
    }
    assert got == {
        ("GpuTemperature", "x1000c0"): (True, [1], False),
        ("GpuTemperature", "y2"): (True, [], True),
        ("NodeOffline", "y2"): (False, [], False),
    }
    table = collector_cli("alerts", "--db", db)[1]
    assert "SILENCED" in table
    assert "yes (#1)" in table
    assert "inhibited" in table


async def test_alerts_limit_cuts_the_list_of_alerts_longest_standing_first(
    store_url: StoreTarget,
) -> None:
    """--limit on the plain list was dropped without a word: it now keeps the N
    longest-standing alerts and says how many more there are; without it, all of them."""
    offline = {"alertname": "NodeOffline", "node": "y2", "severity": "critical"}
    db = str(await _store(store_url, HOT, OTHER, offline))
    code, out, _ = collector_cli("alerts", "--db", db, "--json")
    every = json.loads(out)["alerts"]
    assert (code, len(every)) == (0, 3)
    code, out, _ = collector_cli("alerts", "--db", db, "--json", "--limit", "2")
    cut = json.loads(out)["alerts"]
    assert (code, cut) == (0, every[:2])
    code, out, _ = collector_cli("alerts", "--db", db, "--limit", "1")
    assert code == 0
    assert out.splitlines()[-1] == "... and 2 more (--limit 1)"
    assert len(out.splitlines()) == 3  # header, one alert, the note


async def test_add_and_expire_with_json_print_json(store_url: StoreTarget) -> None:
    """--json on add gives the new silence's ID to scripts; expire --json confirms in JSON."""
    db = str(await _store(store_url))
    code, out, err = collector_cli(
        "silence", "add", "--db", db, "--match", "node=n1", "--for", "1h", "--json"
    )
    assert code == 0, err
    added = json.loads(out)
    assert added["matchers"] == ["node=n1"]
    assert added["ends_at"] > time.time() + 3500
    code, out, err = collector_cli("silence", "expire", str(added["id"]), "--db", db, "--json")
    assert code == 0, err
    assert json.loads(out) == {"id": added["id"], "expired": True}


async def test_expire_of_an_id_beyond_sqlite_integers_says_no_such_silence(
    store_url: StoreTarget,
) -> None:
    """An ID of 23 digits: the usual one line, not SQLite's int-conversion error."""
    db = str(await _store(store_url))
    code, _, err = collector_cli("silence", "expire", "99999999999999999999999", "--db", db)
    assert code == 2
    assert "no silence in force with id 99999999999999999999999" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--history", "--limit", "0"], "--limit must be between 1 and 1,000,000, got 0"),
        (["--history", "--limit", "99999999999999999999"], "--limit must be between 1 and"),
        (["--redeliver", "99999999999999999999999"], "no dead letter with id 9999"),
    ],
)
async def test_alerts_limit_and_redeliver_out_of_range_are_one_line_exit_2(
    store_url: StoreTarget, args: list[str], message: str
) -> None:
    """--limit 0 was read as 1 and a 20-digit one reached SQLite; so did a 23-digit ID."""
    db = str(await _store(store_url))
    code, _, err = collector_cli("alerts", "--db", db, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


async def test_a_10_kb_comment_is_cut_in_the_list_and_whole_in_json(
    store_url: StoreTarget,
) -> None:
    """A silence's comment and author are free text of any length: `silence list` cuts them
    to a column (a 10 kB comment made every row 10 kB wide), --json keeps them whole."""
    db = str(await _store(store_url))
    long = "cooling work in row 3 " * 500
    code, _, _ = collector_cli(
        "silence", "add", "--db", db, "--match", "alertname=GpuTemperature", "--for", "2h",
        "--comment", long, "--author", "j" * 300,
    )  # fmt: skip
    assert code == 0
    code, out, _ = collector_cli("silence", "list", "--db", db)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) < 200
    assert "cooling work in row 3 cooling" in out
    assert "…" in out
    code, out, _ = collector_cli("silence", "list", "--db", db, "--json")
    (silence,) = json.loads(out)["silences"]
    assert (silence["comment"], silence["author"]) == (long, "j" * 300)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--history", "--dead-letters"], "--history and --dead-letters: give one"),
        (["--dead-letters", "--redeliver", "1"], "--dead-letters and --redeliver: give one"),
        (["--since", "1h"], "--since goes with --history"),
        (["--dead-letters", "--since", "1h"], "--since goes with --history"),
        (["--redeliver", "1", "--limit", "5"], "--limit goes with `alerts` or `alerts --hist"),
    ],
)
async def test_alerts_flags_that_ask_different_questions_are_one_line_exit_2(
    store_url: StoreTarget, args: list[str], message: str
) -> None:
    """`alerts --history --dead-letters` printed the dead letters and dropped --history,
    `alerts --since 1h` the alerts firing now whatever their age: a flag silently ignored
    reads as an answer to it. One line naming the flags, exit 2."""
    db = str(await _store(store_url, HOT))
    code, out, err = collector_cli("alerts", "--db", db, *args)
    assert (code, out) == (2, ""), err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--match", "node=x1000c0"], "--match goes with `silence add`, not list"),
        (["list", "--for", "1h"], "--for goes with `silence add`, not list"),
        (["expire", "1", "--match", "node=y2"], "--match goes with `silence add`, not expire"),
        (["add", "1", "--match", "node=y2", "--for", "1h"], "ID goes with `silence expire`"),
        (["expire", "1", "--all"], "--all goes with `silence list`, not expire"),
    ],
)
async def test_a_flag_of_another_action_is_one_line_exit_2_and_changes_nothing(
    store_url: StoreTarget, args: list[str], message: str
) -> None:
    """`silence expire 1 --match node=y2` expired silence 1 whatever it matched, and `silence
    list --match ...` listed every silence: a flag of another action was dropped without a
    word. One line naming it and its action, exit 2; the silence stays in force."""
    db = str(await _store(store_url, HOT))
    code, _, err = collector_cli("silence", "add", "--db", db, "--match", "node=x1000c0",
                                 "--for", "1h")  # fmt: skip
    assert (code, err) == (0, "")
    code, out, err = collector_cli("silence", *args, "--db", db)
    assert (code, out) == (2, ""), err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = collector_cli("silence", "list", "--db", db, "--json")
    assert [s["id"] for s in json.loads(out)["silences"]] == [1]
