"""``collector query``: answers from a real store, output fields, flags, errors, imports."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.alerts.settings import AlertSettings
from collector.cli import COMMANDS, build_parser, main
from collector.cli._args import ReadSettings, read_settings_from_args, settings_from_args
from collector.cli._render import width
from collector.ingest.validate import sample_row
from collector.nodefacts import (
    DEFAULT_EVAL_INTERVAL_S,
    DEFAULT_INTERVAL_S,
    DEFAULT_STALE_INTERVALS,
    Staleness,
)
from collector.paths import DEFAULT_DB_PATH, StoreTarget
from collector.settings import CollectorSettings
from collector.store.connect import open_sync
from collector.store.db import NodeUpdate, QuarantineRow, SampleRow, Store
from collector.store.queries import fleet_summary, printable
from collector.store.reader import StoreReader
from shared.errors import ConfigError
from shared.schema import encode
from tests.helpers import collector_json, count_samples, db_execute, python_child

REPO = Path(__file__).resolve().parents[2]
INTERVAL_S = 30
NODES = FleetSimulator(3).node_ids  # x1000c0s0b0n0 (online), ...n1 (stale), ...b1n0 (offline)
ONLINE, STALE, OFFLINE = NODES
QUARANTINED = 60
# Control characters, a byte that is not UTF-8, a line separator, and more than 80 characters.
HOSTILE_HEAD = b'{"v":1,"node":"\x00\n\xff\xe2\x80\xa8' + b"x" * 100


@pytest.fixture(autouse=True)
def _no_capwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from flags only, whatever the developer's shell exports."""
    for name in list(os.environ):
        if name.upper().startswith("CAPWATCH_"):
            monkeypatch.delenv(name)


def _rows(sim: FleetSimulator, now: float) -> list[SampleRow]:
    rows = []
    for k in range(30):  # the last 15 minutes
        ts = now - 2 - INTERVAL_S * k
        for i, node in enumerate(sim.node_ids):
            if node == STALE and ts > now - 600:
                continue  # went quiet ten minutes ago
            s = sim.sample(i, ts, 100 - k)
            rows.append(sample_row(s, encode(s), ts + 0.1))
    return rows


@pytest.fixture
async def db(store_url: StoreTarget) -> StoreTarget:
    """Three 2-GPU nodes sampled every 30 s (one stale, one offline), counters, quarantine:
    on each backend in turn."""
    path = store_url
    now = time.time()
    sim = FleetSimulator(3, gpus_per_node=2, seed=3, interval_s=INTERVAL_S)
    async with Store(path) as store:
        await store.write_batch(
            _rows(sim, now),
            [NodeUpdate(OFFLINE, status="offline", status_ts=now - 1)],
            sim.node_ids,
        )
        await store.write_counters(
            {"stored": 27, "duplicates": 1, "rejected": 7, "rejected_invalid": 5,
             "rejected_not_json": 2, "rejected_too_old": 0, "samples": 28},
            now,
        )  # fmt: skip
        # oldest first, as the collector writes them: ids grow with arrival
        await store.write_batch(
            [],
            quarantine=[
                QuarantineRow(
                    round((now - 60 * (QUARANTINED - k)) * 1000),
                    None if k % 3 == 2 else NODES[k % 3],
                    "capwatch/v1/nodes/bad+id/sample" if k % 3 == 2 else f"t/{NODES[k % 3]}",
                    "invalid" if k % 2 else "not_json",
                    f"message {k}",
                    HOSTILE_HEAD,
                    5000 + k,
                )
                for k in range(QUARANTINED)
            ],
        )
    return path


def _json(db: StoreTarget, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = collector_json("query", "--db", str(db), *args)
    return result


def test_summary_json_has_the_fleet_figures_and_one_entry_per_node(db: StoreTarget) -> None:
    """States from status and sample age; GPUs and power count online nodes only."""
    s = _json(db)
    assert list(s) == [
        "nodes_total", "nodes_online", "nodes_stale", "nodes_offline", "gpus_online",
        "gpu_util_mean_pct", "gpu_power_w", "cpu_power_w", "node_power_w", "counters", "nodes",
    ]  # fmt: skip
    assert (s["nodes_total"], s["nodes_online"], s["nodes_stale"], s["nodes_offline"]) == (
        3,
        1,
        1,
        1,
    )
    assert s["gpus_online"] == 2
    assert s["counters"]["stored"] == 27
    by_node = {n["node"]: n for n in s["nodes"]}
    assert {n: by_node[n]["state"] for n in NODES} == {
        ONLINE: "online",
        STALE: "stale",
        OFFLINE: "offline",
    }
    online = by_node[ONLINE]
    assert list(online) == [
        "node", "state", "last_sample_age_s", "gpus", "cpu_pct", "gpu_util_pct", "gpu_power_w",
        "cpu_power_w", "node_power_w", "node_power_source",
    ]  # fmt: skip
    assert 1.5 <= online["last_sample_age_s"] < 30
    assert s["gpu_power_w"] == round(online["gpu_power_w"], 1)
    assert by_node[STALE]["last_sample_age_s"] > 600


def test_summary_limit_cuts_the_node_list_not_the_totals(db: StoreTarget) -> None:
    """--limit 1 lists one node; the counts still cover the fleet."""
    s = _json(db, "--limit", "1")
    assert [n["node"] for n in s["nodes"]] == [ONLINE]
    assert s["nodes_total"] == 3


def test_summary_table_shows_counts_counters_and_nodes(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table: a summary line, the collector's counters, one line per node."""
    assert main(["query", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("nodes 3: 1 online, 1 stale, 1 offline | GPUs online 2 |")
    # The store's totals (added by each committed batch), then the last process's counters.
    assert lines[1] == (
        f"store, all time: stored {count_samples(db)}, duplicates 0, quarantined "
        f"{QUARANTINED} | this collector process: stored 27, duplicates 1, rejected 7"
    )
    assert lines[3].split() == [
        "NODE", "STATE", "AGE", "GPUS", "CPU", "GPU", "UTIL", "GPU", "POWER", "CPU", "POWER",
        "NODE", "POWER", "FROM",
    ]  # fmt: skip
    assert [line.split()[:2] for line in lines[4:]] == [
        [ONLINE, "online"],
        [STALE, "stale"],
        [OFFLINE, "offline"],
    ]


async def test_fleet_summary_uses_each_nodes_newest_sample_even_if_a_late_one_arrives(
    tmp_path: Path,
) -> None:
    """A buffered sample stored after a newer one does not become the node's latest."""
    sim = FleetSimulator(2, gpus_per_node=2, seed=4, interval_s=5)
    rows = [
        sample_row(s, encode(s), 1.8e9 + 5 * k + 0.1)
        for k in range(3)
        for s in (sim.sample(i, 1.8e9 + 5 * k, k) for i in range(2))
    ]
    async with Store(tmp_path / "c.db") as store:
        await store.write_batch(
            sorted(rows, key=lambda r: -r.ts_ms),  # newest first: the late ones arrive last
            [NodeUpdate("x1000c0s0b0n0", status="online", status_ts=1.0)],
            ["x1000c0s0b0n0", "x1000c0s0b0n1"],
        )
    with StoreReader(tmp_path / "c.db") as reader:
        summary = fleet_summary(reader, 1.8e9 + 11, staleness=Staleness(3, 5))
    by_node = {n["node"]: n for n in summary["nodes"]}
    assert by_node["x1000c0s0b0n0"]["last_sample_age_s"] == 1.0
    assert by_node["x1000c0s0b0n0"]["state"] == "online"
    assert by_node["x1000c0s0b0n1"]["state"] == "online"  # no status yet, fresh samples
    newest = max((r for r in rows if r.node == "x1000c0s0b0n0"), key=lambda r: r.ts_ms)
    assert by_node["x1000c0s0b0n0"]["cpu_pct"] == newest.cpu_pct
    assert summary["gpus_online"] == 4


def test_node_samples_are_newest_first_within_since(db: StoreTarget) -> None:
    """--node N --since 100s: the samples of the last 100 s (4 at 30 s), newest first."""
    r = _json(db, "--node", ONLINE, "--since", "100s")
    assert (r["node"], r["since_s"]) == (ONLINE, 100.0)
    assert [s["seq"] for s in r["samples"]] == [100, 99, 98, 97]
    assert list(r["samples"][0]) == [
        "node", "ts", "seq", "interval_s", "cpu_pct", "mem_used_bytes", "mem_total_bytes",
        "gpu_count", "gpu_util_pct", "gpu_mem_used_bytes", "gpu_power_w", "cpu_power_w",
        "node_power_w", "node_power_source",
    ]  # fmt: skip
    assert r["samples"][0]["gpu_count"] == 2


def test_node_samples_default_to_the_last_15_minutes(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """--node N alone: since 15m (all 30 samples of the online node, 10 of the stale one)."""
    assert _json(db, "--node", ONLINE)["since_s"] == 900.0
    assert len(_json(db, "--node", ONLINE)["samples"]) == 30
    assert len(_json(db, "--node", STALE)["samples"]) == 10
    assert _json(db, "--node", STALE, "--since", "5m")["samples"] == []
    assert main(["query", "--db", str(db), "--node", STALE, "--since", "5m"]) == 0
    assert capsys.readouterr().out == f"no samples from {STALE} in that window\n"


def test_gpus_rows_come_from_each_nodes_latest_sample(db: StoreTarget) -> None:
    """--gpus: one row per GPU of every node with samples; floats stay floats in JSON."""
    gpus = _json(db, "--gpus")["gpus"]
    assert [(g["node"], g["index"]) for g in gpus] == [
        (n, i) for n in sorted(NODES) for i in range(2)
    ]
    assert list(gpus[0]) == [
        "node", "ts", "index", "uuid", "util_pct", "mem_used_bytes", "mem_total_bytes",
        "power_w", "power_interval_w", "energy_j", "temp_c", "sm_clock_mhz", "pstate",
        "clock_event_reasons", "mem_reserved_bytes", "mem_clock_mhz", "mem_temp_c",
        "enc_util_pct", "dec_util_pct", "pcie_replays", "nvlink_tx_bytes_per_s",
        "nvlink_rx_bytes_per_s", "processes", "jobs", "mig",
    ]  # fmt: skip
    for key in ("util_pct", "temp_c", "mem_temp_c", "enc_util_pct", "dec_util_pct"):
        assert all(isinstance(g[key], float) for g in gpus), key
    # the simulated agents' readings: HBM3 clock, 512 MiB reserved, replays = GPU index
    assert {(g["mem_clock_mhz"], g["mem_reserved_bytes"]) for g in gpus} == {(2619, 512 * 2**20)}
    assert [g["pcie_replays"] for g in gpus] == [g["index"] for g in gpus]
    assert all(g["mem_temp_c"] == g["temp_c"] + 5 for g in gpus)
    newest = _json(db, "--node", ONLINE, "--since", "1m")["samples"][0]
    mine = [g for g in gpus if g["node"] == ONLINE]
    assert {round(g["ts"], 3) for g in mine} == {newest["ts"]}  # ts_ms: to the millisecond
    assert sum(g["util_pct"] for g in mine) / 2 == newest["gpu_util_pct"]
    one = _json(db, "--gpus", "--node", STALE, "--limit", "1")["gpus"]
    assert [(g["node"], g["index"]) for g in one] == [(STALE, 0), (STALE, 1)]
    assert [g["node"] for g in _json(db, "--gpus", "--limit", "1")["gpus"]] == [
        ONLINE,
        ONLINE,
    ]


def test_gpus_table_shows_memory_temperature_and_clock_and_pcie_replays(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """--gpus as a table: MEM TEMP, MEM MHZ and REPLAYS columns with each GPU's reading."""
    gpus = _json(db, "--gpus", "--node", ONLINE)["gpus"]
    assert main(["query", "--db", str(db), "--gpus", "--node", ONLINE]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.index("TEMP") < header.index("MEM TEMP") < header.index("SM MHZ")
    assert header.index("SM MHZ") < header.index("MEM MHZ") < header.index("REPLAYS")
    assert len(lines) == len(gpus) == 2
    for line, g in zip(lines, gpus, strict=True):
        cells = line.split()
        temp, mem_temp = f"{g['temp_c']:.0f}C", f"{g['mem_temp_c']:.0f}C"
        assert cells[cells.index(temp) + 1] == mem_temp
        assert cells[-5:-2] == [str(g["mem_clock_mhz"]), str(g["pstate"]), str(g["pcie_replays"])]
        assert cells[-1] == "-"  # no job: the simulated agents attribute nothing


def test_rejected_lists_quarantined_messages_newest_first_with_counters(db: StoreTarget) -> None:
    """--rejected --json: 50 newest by default, every column, the rejected* counters."""
    r = _json(db, "--rejected")
    assert r["counters"] == {
        "rejected": 7,
        "rejected_invalid": 5,
        "rejected_not_json": 2,
        "rejected_too_old": 0,
        "quarantined_total": QUARANTINED,
        "quarantined_total_invalid": QUARANTINED // 2,
        "quarantined_total_not_json": QUARANTINED // 2,
    }
    messages = r["messages"]
    assert [m["id"] for m in messages] == list(range(QUARANTINED, QUARANTINED - 50, -1))
    assert list(messages[0]) == [
        "id", "received", "received_ms", "node", "topic", "reason", "detail", "payload_head",
        "payload_bytes",
    ]  # fmt: skip
    newest = messages[0]
    # Unix seconds like every other time capwatch prints; received_ms kept for old scripts
    assert all(m["received"] == m["received_ms"] / 1000 for m in messages)
    assert isinstance(newest["received"], float)
    assert (newest["node"], newest["reason"], newest["payload_bytes"]) == (None, "invalid", 5059)
    assert newest["topic"] == "capwatch/v1/nodes/bad+id/sample"
    assert newest["payload_head"] == '{"v":1,"node":"\\x00\\n\\xff\\u2028' + "x" * 100


def test_rejected_filters_by_node_since_and_limit(db: StoreTarget) -> None:
    """--node keeps that node's messages; --since their arrival window; --limit the count."""
    by_node = _json(db, "--rejected", "--node", STALE, "--limit", "100")["messages"]
    assert [m["id"] for m in by_node] == list(range(59, 0, -3))  # k % 3 == 1
    recent = _json(db, "--rejected", "--since", "330s")
    assert [m["id"] for m in recent["messages"]] == [60, 59, 58, 57, 56]
    assert len(_json(db, "--rejected", "--limit", "3")["messages"]) == 3


def test_rejected_table_escapes_and_cuts_the_payload(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table: counters by reason (those at 0 left out), then one line per message,
    payload escaped and cut."""
    assert main(["query", "--db", str(db), "--rejected", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rejected since the collector started: 7 (invalid 5, not_json 2)"
    assert lines[1] == (
        f"quarantined in all (every collector process): {QUARANTINED} "
        f"(invalid {QUARANTINED // 2}, not_json {QUARANTINED // 2})"
    )
    assert lines[3].split()[:5] == ["AGE", "NODE/TOPIC", "REASON", "SIZE", "DETAIL"]
    assert len(lines) == 6
    newest = lines[4]
    assert "capwatch/v1/nodes/bad+id/sample" in newest
    assert "message 59" in newest
    payload = newest[newest.index('{"v"') :]
    assert payload == ('{"v":1,"node":"\\x00\\n\\xff\\u2028' + "x" * 100)[:79] + "…"
    assert "\x00" not in "\n".join(lines)


async def test_rejected_table_cuts_wide_text_by_terminal_columns(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """A detail and a payload in Chinese (two terminal columns a character): each cell takes
    at most the table's 80 columns, cut with "…", and the next column starts under its
    header."""
    async with Store(store_url) as store:
        head = "温度" * 80  # 160 characters, 480 bytes: the first 256 are stored
        await store.write_batch(
            [],
            quarantine=[
                QuarantineRow(
                    round(time.time() * 1000),
                    ONLINE,
                    f"t/{ONLINE}",
                    "not_json",
                    "细节" * 60,
                    head.encode()[:255],  # 85 whole characters
                    len(head.encode()),
                )
            ],
        )
    capsys.readouterr()
    assert main(["query", "--db", str(store_url), "--rejected"]) == 0
    header, row = capsys.readouterr().out.splitlines()[-2:]
    detail, payload = row[row.index("细节") : row.index("温度")].rstrip(), row[row.index("温度") :]
    assert (detail[-1], payload[-1]) == ("…", "…")
    assert 78 <= width(detail) <= 80
    assert 78 <= width(payload) <= 80
    assert width(row[: row.index("温度")]) == width(header[: header.index("PAYLOAD")])


def test_rejected_on_a_store_without_quarantine_is_empty(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store from before the quarantine migration has nothing quarantined."""
    db_execute(db, "DROP TABLE quarantine")
    assert _json(db, "--rejected")["messages"] == []
    assert main(["query", "--db", str(db), "--rejected"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no quarantined messages match"


async def test_gaps_count_at_most_the_intervals_the_nodes_clock_says_passed(
    store_url: StoreTarget,
) -> None:
    """``--gaps``: a real gap counts its samples; a seq jumped by 2**53 within one interval
    counts one, as in the live view (it used to print 9007199254740990 samples missing)."""
    sim = FleetSimulator(1, gpus_per_node=1, seed=3, interval_s=INTERVAL_S)
    node = sim.node_ids[0]
    now = time.time()
    rows = []
    for k, seq in [(0, 0), (1, 1), (5, 5), (6, 2**53 - 1)]:  # (intervals on, seq)
        ts = now - 600 + INTERVAL_S * k
        sample = msgspec.structs.replace(sim.sample(0, ts, seq), epoch=1)
        rows.append(sample_row(sample, encode(sample), ts))
    async with Store(store_url) as store:
        await store.write_batch(rows, new_nodes=[node])
    result = _json(store_url, "--node", node, "--gaps", "--since", "1h")
    assert [(g["after_seq"], g["missing"]) for g in result["gaps"]] == [(5, 1), (1, 3)]
    assert result["missing"] == 4


def test_printable_escapes_what_a_terminal_would_interpret() -> None:
    """Text stays; controls, bad UTF-8 and separators become visible escapes."""
    assert printable(b"plain {json} \xc3\xa9") == "plain {json} é"
    assert printable(b"a\tb\r\n\x1b[31m\x7f\xfe") == "a\\tb\\r\\n\\x1b[31m\\x7f\\xfe"
    assert printable("\u2028\u202e".encode()) == "\\u2028\\u202e"


@pytest.mark.parametrize(
    ("argv", "prog", "message"),
    [
        (
            ["--limit", "0"],
            "collector query",
            "argument --limit: must be between 1 and 1,000,000, got 0",
        ),
        (["--limit", "x"], "collector query", "argument --limit: expected a whole number, got 'x'"),
        (
            ["--gpus", "--rejected"],
            "collector query",
            "argument --rejected: not allowed with argument --gpus",
        ),
        # A flag the command does not take: its usage and its name, not the top-level
        # parser's 'usage: collector [-h] COMMAND ...' (argparse's parse_args).
        (["--bogus"], "collector query", "unrecognized arguments: --bogus"),
        (["--gpus", "extra"], "collector query", "unrecognized arguments: extra"),
    ],
)
def test_bad_flags_are_one_error_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], prog: str, message: str
) -> None:
    """Malformed flags: usage, then one error line naming the flag; exit 2, no traceback."""
    with pytest.raises(SystemExit) as info:
        main(["query", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} ")
    assert err.splitlines()[-1] == f"{prog}: error: {message}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "5x"], "--since '5x' is not a duration"),
        (["--since", "300"], "--since '300' is not a duration: a number needs a unit"),
        (
            ["--since", "1.5h"],
            "--since '1.5h' is not a duration: whole numbers only; write '1h30m'",
        ),
        (["--node", "a/b"], "--node 'a/b' is not a node id"),
        (["--config", "/nonexistent.toml"], "config file '/nonexistent.toml' does not exist"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    db: StoreTarget, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A bad duration, node id or config file: one line naming it, exit 2."""
    assert main(["query", "--db", str(db), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"collector query: error: {message}")
    assert len(err.splitlines()) == 1


def test_missing_database_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query before any collector ran gets one line with the fix, and creates no file."""
    assert main(["query", "--db", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err
    assert "start `collector run` first or pass --db / CAPWATCH_DB_PATH" in err
    assert list(tmp_path.iterdir()) == []


def test_reader_opens_paths_with_uri_characters_read_only(tmp_path: Path) -> None:
    """'?' and '#' in the path are escaped; the reader cannot write."""
    path = tmp_path / "we?ird#name.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with StoreReader(path) as reader:
        assert reader.fetchall("SELECT count(*) FROM t")[0][0] == 0
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.conn.execute("INSERT INTO t VALUES (1)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["we?ird#name.db"]


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["query", *argv])


def test_read_settings_without_config_or_env_are_the_collectors_settings() -> None:
    """The fast path (no pydantic) gives what the settings model gives, defaults included."""
    for argv in ((), ("--db", "/srv/capwatch/x.db")):
        args = _args(*argv)
        full = settings_from_args(args)
        expected = ReadSettings(full.db_path, full.staleness(), full.governance.busy_util_pct)
        assert read_settings_from_args(args) == expected
        assert read_settings_from_args(args).staleness() == full.staleness()
    fields = CollectorSettings.model_fields
    assert fields["db_path"].default == DEFAULT_DB_PATH
    assert fields["stale_intervals"].default == DEFAULT_STALE_INTERVALS
    assert fields["expected_interval_s"].default == DEFAULT_INTERVAL_S
    assert AlertSettings.model_fields["eval_interval_s"].default == DEFAULT_EVAL_INTERVAL_S


def test_read_settings_with_only_capwatch_db_path_are_the_collectors_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CAPWATCH_DB_PATH (in any case) and no other variable: the fast path still, giving what
    the settings model gives (--db over the variable); a path the model refuses is its error."""
    for name in ("CAPWATCH_DB_PATH", "capwatch_Db_path"):
        monkeypatch.setenv(name, "/from/env.db")
        for argv in ((), ("--db", "flag.db"), ("--db", "postgresql://u@h/d")):
            args = _args(*argv)
            full = settings_from_args(args)
            expected = ReadSettings(
                full.store_target, full.staleness(), full.governance.busy_util_pct
            )
            assert read_settings_from_args(args) == expected
        monkeypatch.delenv(name)
    for bad in ("", "/", "postgresql://u@h/d"):
        monkeypatch.setenv("CAPWATCH_DB_PATH", bad)
        with pytest.raises(ConfigError, match="db_path") as info:
            settings_from_args(_args())
        with pytest.raises(ConfigError, match="db_path") as fast:
            read_settings_from_args(_args())
        assert str(fast.value) == str(info.value)


def test_read_settings_take_config_and_env_through_the_settings_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config file or any CAPWATCH_* variable is read and validated as for `collector run`."""
    config = tmp_path / "c.toml"
    config.write_text("stale_intervals = 7\n[alerts]\neval_interval_s = 2\n")
    read = read_settings_from_args(_args("--config", str(config)))
    assert read.staleness() == Staleness(7.0, DEFAULT_INTERVAL_S, 2.0)
    assert read.busy_util_pct == 10.0
    config.write_text("[governance]\nbusy_util_pct = 4\n")
    assert read_settings_from_args(_args("--config", str(config))).busy_util_pct == 4.0
    monkeypatch.setenv("capwatch_db_path", "/from/env.db")  # any case, as pydantic-settings
    assert read_settings_from_args(_args()).store_target == Path("/from/env.db")
    assert read_settings_from_args(_args("--db", "flag.db")).store_target == Path("flag.db")
    monkeypatch.setenv("CAPWATCH_LOG_LEVEL", "loud")  # not used by query, still checked
    with pytest.raises(ConfigError, match="log_level"):
        read_settings_from_args(_args())


def test_top_level_help_lists_each_command_with_its_own_help_line() -> None:
    """`collector --help` built without importing any command reads as the full parser's."""
    assert build_parser(()).format_help() == build_parser().format_help()


def test_unknown_command_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A command that does not exist: exit 2 naming the choices."""
    with pytest.raises(SystemExit) as info:
        main(["qurey"])
    assert info.value.code == 2
    choices = ", ".join(f"'{name}'" for name in COMMANDS)
    assert choices.startswith("'run', 'query', 'alerts', 'silence', 'rules', 'solve'")
    assert f"invalid choice: 'qurey' (choose from {choices})" in capsys.readouterr().err


_LOADED = (
    "import sys\n"
    "from collector.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "print(sorted(m for m in {names!r} if m in sys.modules))\n"
    "sys.exit(code)\n"
)
_SETTINGS = ("pydantic", "pydantic_settings", "collector.settings", "shared.settings")
_DAEMON = ("aiosqlite", "aiomqtt", "asyncio", "structlog", "collector.service")
_STORE = ("collector.store.db", "zstandard", "msgspec", "shared.schema")


def _loaded(*argv: str, names: tuple[str, ...], **variables: str) -> list[str]:
    """Which of ``names`` a fresh ``collector ARGV`` process imported (with no ``CAPWATCH_*``
    environment variable but those in ``variables``)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CAPWATCH_")}
    env.update(variables)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *sys.path])
    done = subprocess.run(
        [sys.executable, "-c", _LOADED.format(names=names), *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1].replace("'", '"'))
    return loaded


@pytest.mark.parametrize("argv", [["--help"], ["query", "--help"], ["solve", "--help"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    """Help loads no settings model, daemon, store, wire schema or solver code."""
    heavy = (*_SETTINGS, *_DAEMON, *_STORE, "sqlite3", "collector.power", "collector.cli.run")
    assert _loaded(*argv, names=heavy) == []


def test_a_collector_on_sqlite_without_a_plan_loads_no_postgresql_nor_capacity_code(
    tmp_path: Path,
) -> None:
    """Its start is part of every drain's CPU (issue 14): psycopg (the PostgreSQL store and
    leader lease), the capacity job with its power model, the solver (scipy), plotting and the
    webhooks' HTTP client (httpx: with receivers only) are loaded only when used; rich and
    pygments, which structlog imports for console tracebacks wherever they are installed (a
    development environment: capwatch does not depend on them), never."""
    unused = (
        "psycopg",
        "collector.capacity.job",
        "collector.power",
        "scipy",
        "matplotlib",
        "httpx",
        "rich",
        "pygments",
    )
    code = (
        "import sys\n"
        "from collector.service import Collector\n"
        "from collector.settings import CollectorSettings\n"
        f"Collector(CollectorSettings(db_path={str(tmp_path / 'c.db')!r}))\n"
        f"print(sorted(m for m in {unused!r} if m in sys.modules))\n"
    )
    assert python_child(code) == "[]\n"


def test_query_without_config_or_env_skips_the_settings_model(db: StoreTarget) -> None:
    """A plain query never loads pydantic; neither does --rejected."""
    assert _loaded("query", "--db", str(db), names=_SETTINGS) == []
    assert _loaded("query", "--db", str(db), "--rejected", names=_SETTINGS) == []
    if isinstance(db, Path):  # the store from CAPWATCH_DB_PATH, as bench/bench_cli.py times it
        assert _loaded("query", names=_SETTINGS, CAPWATCH_DB_PATH=str(db)) == []


def test_query_reads_without_the_daemons_store_code(db: StoreTarget) -> None:
    """The summary loads no aiosqlite/asyncio/structlog/zstd/msgspec; --gpus only zstandard."""
    if not isinstance(db, Path):
        pytest.skip("SQLite's budget: psycopg itself loads asyncio")
    if _loaded("query", "--db", str(db), names=("collector.store.db",)):
        pytest.skip(
            "collector/store/__init__.py imports collector.store.db (aiosqlite, structlog, "
            "zstandard, msgspec): make it import nothing so the reader loads alone"
        )
    assert _loaded("query", "--db", str(db), names=(*_DAEMON, *_STORE)) == []
    assert _loaded("query", "--db", str(db), "--gpus", names=(*_DAEMON, *_STORE)) == ["zstandard"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--node", "n1", "--since", "99999999999w"], "longer than 100 years"),
        (["--node", "n1", "--limit", "99999999999999999999999"], "between 1 and 1,000,000"),
    ],
)
def test_absurd_numbers_are_one_line_not_an_overflow_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Past SQLite's 64-bit integers once raised OverflowError out of the query."""
    db = tmp_path / "c.db"
    sqlite3.connect(db).close()
    with contextlib.suppress(SystemExit):
        assert main(["query", "--db", str(db), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_file_that_is_not_a_capwatch_database_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty or foreign SQLite file: one line naming the fix, not 'no such table'."""
    db = tmp_path / "other.db"
    sqlite3.connect(db).close()
    assert main(["query", "--db", str(db)]) == 2
    assert "is not a capwatch database" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """`collector query | head`: exit 141, no BrokenPipeError traceback."""
    db = tmp_path / "c.db"
    sqlite3.connect(db).close()
    script = (
        "import sys; from shared.cli import run_command; import argparse\n"
        "p = argparse.ArgumentParser(prog='collector'); s = p.add_subparsers(dest='command')\n"
        "def h(a):\n"
        "    for _ in range(100000): print('x' * 80)\n"
        "    return 0\n"
        "s.add_parser('query').set_defaults(handler=h)\n"
        "sys.exit(run_command(p, ['query']))\n"
    )
    proc = subprocess.run(
        f'{sys.executable} -c "{script}" | head -1',
        shell=True,
        capture_output=True,
        text=True,
        check=False,
        executable="/bin/bash",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.stdout == "x" * 80 + "\n"
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_store_older_than_this_version_says_it_is_not_migrated(
    db: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """A column this version reads is missing (a store the collector is still migrating as
    it starts, or an older one): one line saying so and what to do, not the backend's
    'no such column'; on both backends."""
    with contextlib.closing(open_sync(db, write=True)) as conn:
        conn.begin(write=True)
        conn.execute("ALTER TABLE samples DROP COLUMN node_power_w")
        conn.commit()
    capsys.readouterr()
    assert main(["query", "--db", str(db), "--json"]) == 2
    err = capsys.readouterr().err
    assert "is not migrated to this version yet" in err
    assert "node_power_w" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [[], ["--json"], ["--gaps"], ["--gpus"], ["--since", "30d", "--step", "1h"]],
    ids=lambda a: " ".join(a) or "samples",
)
def test_a_node_the_store_never_knew_is_refused_not_an_empty_answer(
    db: StoreTarget, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """`query --node x1000c0s0b0m0` (a typo) said "no samples from x1000c0s0b0m0 in that
    window", exit 0, as if the node were quiet; `collector plot --node` already refused it.
    One line naming --node, exit 2. A known node with nothing in the window still answers
    (empty), and --rejected takes any name: a node whose every message was refused never
    had a row."""
    assert main(["query", "--db", str(db), "--node", "x1000c0s0b0m0", *argv]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err.count("\n")) == ("", 1), captured
    assert "--node 'x1000c0s0b0m0': no such node (see `collector query`)" in captured.err
    flags = [a for a in argv if a in ("--json", "--gaps", "--gpus")]
    assert main(["query", "--db", str(db), "--node", STALE, "--since", "1m", *flags]) == 0
    assert main(["query", "--db", str(db), "--node", "x1000c0s0b0m0", "--rejected"]) == 0
