"""``collector solve``: output, modes, exit codes, and one-line errors without tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.capacity.config import load_capacity_plan
from collector.cli import build_parser, main
from shared.errors import PlanError
from tests.helpers import collector_json

DATA = Path(__file__).parents[1] / "data" / "power"
OLD = str(DATA / "old_tool_example.json")
POD = str(DATA / "dgx_h100_superpod.toml")


def _registered() -> bool:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "solve" in action.choices
    return False


pytestmark = pytest.mark.skipif(
    not _registered(),
    reason="collector/cli.py does not register `solve` yet "
    "(import solve_cmd and call solve_cmd.add_parser(sub) in build_parser)",
)


def _json(*argv: str) -> dict[str, object]:
    payload: dict[str, object] = collector_json("solve", *argv)
    return payload


def test_flat_json_reproduces_the_old_tool() -> None:
    """--fabric-model flat --json on the old config: 593 nodes, 4,744 GPUs, 4,996,066 W."""
    payload = _json("--config", OLD, "--fabric-model", "flat")
    solution = payload["solution"]
    assert isinstance(solution, dict)
    assert (solution["nodes"], solution["gpus"]) == (593, 4744)
    fabric = solution["fabric"]
    assert (fabric["leaves"], fabric["leaf_spine_links"], fabric["spines"]) == (149, 4768, 75)
    power = solution["power"]
    assert (power["nodes_w"], power["switching_w"], power["optics_w"]) == (
        4_655_050,
        283_800,
        57_216,
    )
    assert power["total_it_w"] == 4_996_066
    assert payload["flat_comparison"] is None
    assert payload["old_tool_config"] is True


def test_default_text_explains_the_difference(capsys: pytest.CaptureFixture[str]) -> None:
    """The fat-tree answer (553 nodes) and why the old tool's 593 cannot be built."""
    assert main(["solve", "--config", OLD]) == 0
    out = capsys.readouterr().out
    assert "Answer: at most 553 nodes, 4,424 GPUs" in out
    assert "binding: IT power cap" in out
    assert "3 tiers" in out
    assert "The old tool (flat model) on this plan: 593 nodes, 4,744 GPUs, 149 leaves" in out
    assert "149 leaves cannot connect to 64-port spines in two tiers" in out
    assert "(-40 nodes)" in out


def test_default_json_carries_the_comparison() -> None:
    """JSON output has the flat comparison with its reasons."""
    payload = _json("--config", OLD)
    comparison = payload["flat_comparison"]
    assert isinstance(comparison, dict)
    assert (comparison["nodes"], comparison["spines"]) == (593, 75)
    assert comparison["reasons"][0].startswith("149 leaves cannot connect")


def test_superpod_text_shows_racks_and_rack_power(capsys: pytest.CaptureFixture[str]) -> None:
    """Rack power binds: 4 DGX per 40.8 kW rack where space allows 6."""
    assert main(["solve", "--config", POD]) == 0
    out = capsys.readouterr().out
    assert "Answer: at most 131 nodes, 1,048 GPUs" in out
    assert "rack power binds" in out
    assert "DGX-H100: 4 per rack (limited by power), 33 racks" in out


def test_sweep_prints_one_row_per_step(capsys: pytest.CaptureFixture[str]) -> None:
    """it_cap_mw=1:10:1 prints a header and 10 rows, the 5 MW row at 553 nodes."""
    assert main(["solve", "--config", OLD, "--sweep", "it_cap_mw=1:10:1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["it_cap_mw", "nodes", "GPUs"]
    assert len(lines) == 11
    assert lines[5].split()[:3] == ["5", "553", "4,424"]
    assert lines[5].endswith("it_power")


def test_sweep_json_lists_points() -> None:
    """--json sweep: param and one point per value, GPUs never falling."""
    payload = _json("--config", OLD, "--sweep", "it_cap_mw=1:20:1")
    points = payload["points"]
    assert payload["param"] == "it_cap_mw"
    assert isinstance(points, list)
    assert len(points) == 20
    gpus = [p["gpus"] for p in points]
    assert gpus == sorted(gpus)


def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--plot draws the sweep into a PNG file."""
    png = tmp_path / "sweep.png"
    argv = ["solve", "--config", OLD, "--sweep", "node.gpu_w=600:1000:50", "--plot", str(png)]
    assert main(argv) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    assert f"plot written to {png}" in capsys.readouterr().out


def test_plot_without_matplotlib_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the optional extra, --plot says how to install it; exit 2."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = [
        "solve",
        "--config",
        OLD,
        "--sweep",
        "it_cap_mw=1:3:1",
        "--plot",
        str(tmp_path / "p.png"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "collector solve: error: --plot needs matplotlib, which is not installed: "
        "pip install 'capwatch[plot]'\n"
    )


def test_plot_needs_a_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    """--plot alone is a one-line error."""
    assert main(["solve", "--config", OLD, "--plot", "x.png"]) == 2
    assert "--plot draws a sweep" in capsys.readouterr().err


def test_fixed_fleet_fits_exit_0() -> None:
    """--fixed 127 on the SuperPOD plan fits, with 91,380 W headroom and room for 4 more."""
    payload = _json("--config", POD, "--fixed", "DGX-H100=127")
    solution = payload["solution"]
    assert isinstance(solution, dict)
    assert solution["mode"] == "fixed"
    assert solution["fits"] is True
    assert solution["headroom_w"] == pytest.approx(91_380)
    assert solution["spare_nodes"] == [{"node_type": "DGX-H100", "nodes": 4}]
    assert (solution["fabric"]["leaves"], solution["fabric"]["spines"]) == (32, 16)


def test_fixed_fleet_over_the_cap_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A bare count works for one node type; 594 old-tool nodes (flat) do not fit."""
    code = main(["solve", "--config", OLD, "--fabric-model", "flat", "--fixed", "594"])
    out = capsys.readouterr().out
    assert code == 1
    assert "Fleet: 594 nodes, 4,752 GPUs: does NOT fit" in out
    assert "OVER the budget by 3,916 W" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fixed", "H100=3"], "--fixed: the plan has no node type 'H100' (known: GPU-8x)"),
        (["--fixed", "GPU-8x=3", "--fixed", "GPU-8x=4"], "given twice"),
        (["--sweep", "bogus=1:2:1"], "bogus: unknown parameter"),
        (["--sweep", "fabric.leaf.ports=60:64:4"], "fabric.leaf_uplink_ports: 32 host + 32"),
    ],
)
def test_bad_flags_give_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Flag values the parser cannot judge alone fail with exit 2 and one line."""
    assert main(["solve", "--config", OLD, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("collector solve: error: ")
    assert message in err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"node": {"gpu_ww": 1}}, "node.gpu_ww: unknown key; did you mean 'gpu_w'?"),
        ({"node": {"gpu_w": -700}}, "node.gpu_w: must be ≥ 0, got -700"),
        ({"fabric": {"leaf_uplink_ports": 40}}, "fabric.leaf_uplink_ports: 32 host + 40 uplink"),
        ({"it_cap_mw": 0.005}, "it_cap_mw: the IT budget of 5,000 W is below the smallest"),
    ],
)
def test_bad_plans_exit_2_with_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, edit: dict[str, object], message: str
) -> None:
    """Invalid plans: one line naming the field, exit 2, no traceback."""
    data = json.loads(Path(OLD).read_text())
    for key, value in edit.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(data))
    assert main(["solve", "--config", str(plan)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collector solve: error: ")
    assert message in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_missing_config_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A plan that does not exist: exit 2, one line."""
    assert main(["solve", "--config", "/nonexistent/plan.json"]) == 2
    assert capsys.readouterr().err == (
        "collector solve: error: cannot read plan /nonexistent/plan.json: "
        "No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        ("GPU-8x=\u0663", "the node count must be a whole number"),  # int() reads it as 3
        ("1_000", "the node count must be a whole number"),  # int() reads it as 1000
        ("GPU-8x=-3", "the node count must be a whole number"),
        ("GPU-8x=10000001", "the node count must be within 0..10,000,000"),
        ("99999999999999999999999", "the node count must be within 0..10,000,000"),
    ],
)
def test_fixed_counts_are_read_as_capacity_reads_added_nodes(
    capsys: pytest.CaptureFixture[str], fixed: str, message: str
) -> None:
    """--fixed takes the node counts `collector capacity --add` takes (ASCII digits, at most
    10,000,000): an Arabic-Indic digit or an underscore is not silently a count, and 10^23
    nodes is a typo, not a 815,079,999,999,999,892,072,169,472 W fleet."""
    with pytest.raises(SystemExit) as info:
        main(["solve", "--config", OLD, "--fixed", fixed])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"collector solve: error: argument --fixed: {fixed!r}: {message}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--config", OLD, "--sweep", "it_cap_mw"],
        ["--config", OLD, "--sweep", "it_cap_mw=1:2:1", "--fixed", "3"],
        ["--config", OLD, "--fixed", "-3"],
        ["--config", OLD, "--fabric-model", "clos"],
    ],
)
def test_argparse_errors_exit_2_with_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Malformed flags are argparse errors: usage, one error line, exit 2, no traceback."""
    with pytest.raises(SystemExit) as info:
        main(["solve", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: collector solve")
    assert "collector solve: error: " in err
    assert "Traceback" not in err


def test_help_explains_modes_and_sweep_params(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names the modes, gives examples and the sweep parameters."""
    with pytest.raises(SystemExit) as info:
        main(["solve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--sweep PARAM=START:STOP:STEP", "--fixed TYPE=COUNT", "--fabric-model"):
        assert text in out
    assert "collector solve --config old-tool.json --fabric-model flat" in out
    assert "node.gpu_w (every node type)" in out


def test_console_script_runs_solve() -> None:
    """The installed `collector` script: JSON on stdout for a good plan, one line for a bad one."""
    script = Path(sys.executable).with_name("collector")
    # The child imports the same modules as this process, even from a tree not installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    good = subprocess.run(
        [str(script), "solve", "--config", OLD, "--fabric-model", "flat", "--json"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["solution"]["nodes"] == 593
    bad = subprocess.run(
        [str(script), "solve", "--config", OLD, "--sweep", "it_cap_mw=5:1:1"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "STEP must be > 0 and STOP ≥ START" in bad.stderr


def test_a_plan_missing_a_table_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plan file without its [site] table: the error names the file as well as the key
    (it said only "site: missing (required)", with the plan from a setting too)."""
    plan = tmp_path / "site-plan.json"
    plan.write_text("{}")
    assert main(["solve", "--config", str(plan)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(f"{plan}: site: missing (required)")
    with pytest.raises(PlanError, match=r"site-plan\.json: site: missing") as caught:
        load_capacity_plan(plan)  # collector run's and capacity's capacity.plan
    assert caught.value.field == "site"
