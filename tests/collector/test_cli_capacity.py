"""`collector capacity` and `collector plot` against a real store: answers, and one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.simulate import FleetSimulator
from collector.capacity.compute import compute_picture, fleet_solution
from collector.capacity.config import load_capacity_plan
from collector.capacity.job import snapshot_row
from collector.capacity.whatif import parse_add
from collector.cli import main
from collector.ingest.validate import sample_row
from collector.paths import StoreTarget
from collector.store.capacity import write_snapshot
from collector.store.db import NodeUpdate, Store
from shared.errors import ConfigError
from shared.schema import encode
from tests.collector.capacity.helpers import PLAN, filled_view, site_plan
from tests.helpers import python_child


async def _store(db: StoreTarget, *, snapshots: int) -> None:
    """A migrated store holding ``snapshots`` capacity snapshots of a 20-node fleet."""
    cplan = site_plan()
    now = time.time()
    view, _ = filled_view(FleetSimulator(20, seed=7), now)
    async with Store(db) as store:
        for k in range(snapshots):
            p = compute_picture(cplan, view.nodes(), now - 30 * (snapshots - k))
            await write_snapshot(store, snapshot_row(p), keep_s=86_400)


async def test_the_newest_snapshot_is_shown_with_json(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the newest snapshot's picture and where it came from."""
    db = store_url
    await _store(db, snapshots=3)
    capsys.readouterr()  # the store's log lines
    assert main(["capacity", "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"].startswith("snapshot, ")
    assert out["capacity"]["nodes"] == 20
    assert out["capacity"]["cap_w"] == 5e6


async def test_snapshots_older_than_the_keep_window_are_deleted(
    store_url: StoreTarget, tmp_path: Path
) -> None:
    """Each write deletes the snapshots that fell out of keep_s."""
    db = store_url
    await _store(db, snapshots=3)
    cplan = site_plan()
    view, _ = filled_view(FleetSimulator(2, seed=7), time.time())
    async with Store(db) as store:
        p = compute_picture(cplan, view.nodes(), time.time())
        deleted = await write_snapshot(store, snapshot_row(p), keep_s=45)
        rows = await store.fetchall("SELECT count(*) FROM capacity_snapshots")
    assert deleted == 2
    assert rows[0][0] == 2


async def test_what_if_equals_the_solver_on_the_grown_fleet(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--add TYPE=N adds N nameplates and the grown fabric, exactly as solve_fixed says."""
    db = store_url
    await _store(db, snapshots=1)
    capsys.readouterr()
    code = main(
        ["capacity", "--db", str(db), "--plan", str(PLAN), "--add", "HGX-B200=40", "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    p, w = out["capacity"], out["what_if"]
    counts = {t["node_type"]: t["nodes"] for t in p["types"]}
    totals = {t["node_type"]: t["draw_w"] for t in p["types"]}
    counts["HGX-B200"] += 40
    totals["HGX-B200"] += 40 * 14_300
    solved = fleet_solution(site_plan().plan, counts, totals)
    assert w["it_w"] == solved.power.total_it_w
    assert w["added_w"] == pytest.approx(solved.power.total_it_w - p["it_w"])
    assert w["added_node_w"] == {"HGX-B200": 14_300}
    assert code == 0
    assert w["fits"] is True


async def test_what_if_that_breaks_the_cap_exits_1_naming_the_constraint(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Adding 400 B200 nodes to a 5 MW site: does not fit, the IT cap breaks first."""
    db = store_url
    await _store(db, snapshots=1)
    capsys.readouterr()
    code = main(["capacity", "--db", str(db), "--plan", str(PLAN), "--add", "400xHGX-B200"])
    text = capsys.readouterr().out
    assert code == 1
    assert "does NOT fit: IT power cap breaks first" in text


async def test_a_plan_other_than_the_snapshots_is_recomputed_not_ignored(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--plan naming another site (here a 2 MW cap) shows that site, not the 5 MW snapshot;
    the snapshot's own plan still shows the snapshot."""
    db = store_url
    await _store(db, snapshots=1)
    other = tmp_path / "smaller.toml"
    other.write_text(PLAN.read_text().replace("it_cap_mw = 5.0", "it_cap_mw = 2.0"))
    capsys.readouterr()
    assert main(["capacity", "--db", str(db), "--plan", str(other), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"].startswith("recomputed")
    assert out["capacity"]["cap_w"] == 2e6
    assert out["capacity"]["plan"] == str(other)
    assert main(["capacity", "--db", str(db), "--plan", str(PLAN), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"].startswith("snapshot, ")
    assert out["capacity"]["cap_w"] == 5e6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--add", "DGX-H100=x"], "--add 'DGX-H100=x': the count must be a whole number"),
        (["--add", "7xNOPE"], "the plan has no node type 'NOPE'"),
        (["--add", "lots"], "write TYPE=N or NxTYPE"),
        (["--top", "-1"], "--top must be ≥ 0"),
        # --basis sizes the --add nodes; alone it was dropped without a word
        (["--basis", "typical"], "--basis goes with `capacity --add`, not a picture without"),
        (["--now", "--basis", "max"], "--basis goes with `capacity --add`"),
        # --explain answers before the what-if: --add was dropped without a word
        (
            ["--explain", "x1000c0s0b0n0", "--add", "HGX-B200=4"],
            "--add (a what-if of the whole fleet) goes without --explain",
        ),
    ],
)
async def test_a_bad_flag_is_one_line_and_exit_2(
    store_url: StoreTarget,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    """Each mistake: exit 2, one line on stderr naming the flag, no traceback."""
    db = store_url
    await _store(db, snapshots=1)
    assert main(["capacity", "--db", str(db), "--plan", str(PLAN), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


async def test_no_snapshot_yet_and_no_plan_are_one_line_errors(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty store says how to get a snapshot; --now without a plan asks for one."""
    db = store_url
    await _store(db, snapshots=0)
    assert main(["capacity", "--db", str(db)]) == 2
    assert "no capacity snapshot yet" in capsys.readouterr().err
    # plot capacity drew an empty picture and exited 0: the same line, nothing written
    out = tmp_path / "c.png"
    assert main(["plot", "capacity", "--db", str(db), "--out", str(out)]) == 2
    assert (capsys.readouterr().err, out.exists()) == (
        "collector plot: error: no capacity snapshot yet: set capacity.plan and let "
        "`collector run` complete a cycle\n",
        False,
    )
    assert main(["capacity", "--db", str(db), "--now"]) == 2
    assert "no site plan: pass --plan FILE" in capsys.readouterr().err
    assert main(["capacity", "--db", str(db), "--plan", str(PLAN), "--remove", "ghosts"]) == 2
    assert "--remove 'ghosts': no such pool" in capsys.readouterr().err


async def test_plot_capacity_with_no_snapshot_in_the_window_is_one_line_and_exit_2(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Snapshots stored (60 s and 30 s ago) but none inside --since 10s: it drew an empty
    picture and exited 0; now one line saying when the stored ones were taken, no file."""
    pytest.importorskip("matplotlib")
    db = store_url
    await _store(db, snapshots=2)
    capsys.readouterr()
    out = tmp_path / "c.png"
    argv = ["plot", "capacity", "--db", str(db), "--out", str(out)]
    assert main([*argv, "--since", "10s"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "collector plot: error: no capacity snapshot in the window: the stored ones were "
        "taken from 20"
    ), err
    assert err.endswith("Z; widen --since\n"), err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    assert main([*argv, "--since", "5m"]) == 0  # the window holds both
    assert out.exists()


async def test_plot_refuses_a_non_png_and_a_node_with_another_picture(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad plot flags are one line and exit 2."""
    db = store_url
    await _store(db, snapshots=1)
    assert main(["plot", "--db", str(db), "--out", str(tmp_path / "a.jpg")]) == 2
    assert "write a .png file" in capsys.readouterr().err
    assert main(["plot", "capacity", "--db", str(db), "--node", "x1000c0s0b0n0"]) == 2
    assert "--node goes with the usage picture" in capsys.readouterr().err


def test_parse_add_reads_both_spellings() -> None:
    """TYPE=N and NxTYPE give the same answer."""
    known = ["DGX-H100"]
    assert parse_add("DGX-H100=32", known) == ("DGX-H100", 32)
    assert parse_add("32xDGX-H100", known) == ("DGX-H100", 32)
    with pytest.raises(ConfigError):
        parse_add("0xDGX-H100", known)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("DGX-H100=1_000", "must be a whole number"),
        ("DGX-H100=\u0663", "must be a whole number"),  # an Arabic-Indic 3: int() takes it
        ("DGX-H100=-5", "must be a whole number"),
        ("DGX-H100=0", "within 1..10,000,000"),
        ("99999999999999999999xDGX-H100", "within 1..10,000,000"),
    ],
)
def test_parse_add_refuses_odd_and_absurd_counts(text: str, message: str) -> None:
    """Only ASCII digits, 1 to 10 million: a typo is an error, not a what-if of 10^20 nodes."""
    with pytest.raises(ConfigError, match=message):
        parse_add(text, ["DGX-H100"])


async def test_plot_since_zero_is_one_line_and_exit_2(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since 0 would draw an empty window (and matplotlib warns): refused, naming it."""
    db = store_url
    await _store(db, snapshots=1)
    capsys.readouterr()
    out = tmp_path / "c.png"
    assert main(["plot", "capacity", "--db", str(db), "--since", "0s", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--since '0s' must be longer than 0" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


async def test_plot_usage_of_an_unknown_node_is_one_line_and_exit_2(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --node is refused (as a mistyped --pool is), not drawn as an empty picture."""
    db = store_url
    await _store(db, snapshots=1)
    capsys.readouterr()
    out = tmp_path / "n.png"
    assert main(["plot", "--db", str(db), "--node", "x9999c0s0b0n0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--node 'x9999c0s0b0n0': no such node" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("plan", "message"),
    [("absent.toml", "cannot read plan"), ("plan.yaml", "must be a .json or .toml file")],
)
def test_collector_run_names_capacity_plan_when_the_file_is_unusable(
    store_url: StoreTarget, tmp_path: Path, plan: str, message: str
) -> None:
    """A missing or wrongly named plan file: one line naming capacity.plan, exit 2."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    (tmp_path / "plan.yaml").write_text("site: {}")
    cfg = tmp_path / "collector.toml"
    cfg.write_text(f'[capacity]\nplan = "{tmp_path / plan}"\n')
    db = store_url
    # A process of its own: `collector run` configures logging for the whole process.
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "run", "--config", str(cfg), "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("collector run: error: setting 'capacity.plan' (")
    assert message in last


async def test_a_rack_name_with_a_newline_and_an_escape_stays_on_its_row(
    store_url: StoreTarget, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rack named ``row<LF>9<ESC>[2J`` in the plan is shown escaped: its table row stays one
    line, and nothing reaches the terminal as a control character."""
    plan = tmp_path / "site.toml"
    plan.write_text(
        PLAN.read_text().replace(
            '[[capacity.racks]]\nname = "service-row"\nnodes = ["svc-*"]\nlimit_kw = 10',
            '[[capacity.racks]]\nname = "row\\n9\\u001b[2J"\nnodes = ["x1000c0s0*"]\nlimit_kw = 1',
        )
    )
    cplan = load_capacity_plan(plan)
    assert cplan.racks[0].name == "row\n9\x1b[2J"
    view, _ = filled_view(FleetSimulator(3, seed=7), time.time())
    db = store_url
    async with Store(db) as store:
        p = compute_picture(cplan, view.nodes(), time.time())
        await write_snapshot(store, snapshot_row(p), keep_s=86_400)
    capsys.readouterr()
    assert main(["capacity", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    rows = [line for line in out.splitlines() if line.startswith("row")]
    assert len(rows) == 1
    assert rows[0].startswith("row\\n9\\x1b[2J  ")
    assert rows[0].endswith("OVER")
    assert "row\\n9\\x1b[2J draws" in out  # the binding line names it too


async def test_a_rack_name_with_dollar_signs_is_drawn_as_written(tmp_path: Path) -> None:
    """matplotlib reads text between two ``$`` as TeX: a rack the plan names ``r$\\frac$x``
    stopped `collector plot hierarchy` with a ParseSyntaxException traceback (and
    ``r$x^2$`` would be drawn as a formula). The picture is written, the name as it is."""
    pytest.importorskip("matplotlib")
    plan = tmp_path / "site.toml"
    plan.write_text(
        PLAN.read_text().replace(
            '[[capacity.racks]]\nname = "service-row"\nnodes = ["svc-*"]\nlimit_kw = 10',
            '[[capacity.racks]]\nname = "r$\\\\frac$x"\nnodes = ["x1000c0s0*"]\nlimit_kw = 1',
        )
    )
    assert load_capacity_plan(plan).racks[0].name == "r$\\frac$x"
    sim = FleetSimulator(3, seed=7)
    now = time.time()
    samples = [sim.sample(i, now - 1, 0) for i in range(3)]
    db = tmp_path / "capwatch.db"
    async with Store(db) as store:
        await store.write_batch(
            [sample_row(s, encode(s), now) for s in samples],
            [NodeUpdate(s.node, status="online", status_ts=now) for s in samples],
            [s.node for s in samples],
        )
    png = tmp_path / "racks.png"
    argv = ["plot", "hierarchy", "--db", str(db), "--plan", str(plan), "--out", str(png)]
    assert main(argv) == 0
    assert png.stat().st_size > 0


async def test_recomputing_without_plan_uses_the_newest_snapshots_plan(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """`collector capacity` shows the snapshot the collector made with its plan; `--now`
    (and `--explain`, `--remove`, `--stale-basis`) recompute with that same plan when none
    is given, as `--add` and `plot hierarchy` do. It said 'no site plan' instead."""
    db = store_url
    await _store(db, snapshots=1)
    capsys.readouterr()
    assert main(["capacity", "--db", str(db), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["capacity"]["plan"] == str(PLAN)
    assert main(["capacity", "--db", str(db), "--now", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"].startswith("recomputed from the store's newest samples")
    assert (out["capacity"]["plan"], out["capacity"]["cap_w"]) == (str(PLAN), 5e6)


async def test_measured_means_one_thing_on_the_capacity_screen(
    store_url: StoreTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    """'measured' on the screen is a node's input power read from its BMC or PSUs (the
    obtained line, the MEASURED column): the nodes line counts the nodes drawn from fresh
    samples as such, not as 'measured' (it said '20 measured' beside 'measured (0)')."""
    db = store_url
    await _store(db, snapshots=1)
    capsys.readouterr()
    assert main(["capacity", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    (nodes,) = [line for line in lines if line.lstrip().startswith("nodes ")]
    assert "20: 20 from fresh samples, 0 stale/offline" in nodes
    assert "measured" not in nodes
    (obtained,) = [line for line in lines if line.lstrip().startswith("obtained ")]
    assert "kW measured (0)" in obtained


async def test_the_store_from_capwatch_db_path_alone_skips_the_settings_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`collector capacity` with the store named by CAPWATCH_DB_PATH alone takes the store
    readers' fast path, as with --db: no settings model loaded (it built the whole model
    before), the same picture."""
    db = tmp_path / "c.db"
    await _store(db, snapshots=1)
    capsys.readouterr()
    assert main(["capacity", "--db", str(db), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    code = (
        "import contextlib, io, json, os, sys\n"
        f"os.environ['CAPWATCH_DB_PATH'] = {str(db)!r}\n"
        "from collector.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    assert main(['capacity', '--json']) == 0\n"
        "loaded = [m for m in ('pydantic', 'collector.settings') if m in sys.modules]\n"
        "print(json.dumps({'loaded': loaded, 'out': json.loads(out.getvalue())}))\n"
    )
    got = json.loads(python_child(code).splitlines()[-1])
    assert got["loaded"] == []
    assert got["out"]["capacity"] == expected["capacity"]
