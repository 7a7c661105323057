"""The rule families' settings ([alerts], [capacity], [governance]): the rules take them as
they are; an unknown name in a ``disabled`` list is refused the same way by every command;
the settings load without the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collector.alerts import names
from collector.alerts.builtin import builtin_rules
from collector.alerts.rule import Rule
from collector.capacity.job import CapacityState
from collector.capacity.rules import capacity_rules
from collector.governance.job import GovernanceView
from collector.governance.rules import governance_rules
from collector.settings import CollectorSettings
from shared.settings import load_settings
from tests.collector.capacity.helpers import PLAN
from tests.helpers import collector_cli, python_child

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_capwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("CAPWATCH_")]:
        monkeypatch.delenv(name)


def _settings(tmp_path: Path, toml: str) -> CollectorSettings:
    config = tmp_path / "collector.toml"
    config.write_text(toml)
    return load_settings(CollectorSettings, config_file=config)


def _rules(s: CollectorSettings) -> dict[str, Rule]:
    """Every rule in force, as the collector builds them."""
    rules = builtin_rules(s.alerts, s.staleness())
    rules += capacity_rules(CapacityState(), s.capacity)
    rules += governance_rules(GovernanceView, s.governance)
    return {r.name: r for r in rules}


FAMILIES = [("alerts", "GpuXid", "GpuXd"), ("capacity", "SitePowerRising", "SitePowerRisng")]
FAMILIES += [("governance", "LeasedGpusIdle", "LeasedGpuIdle")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("command", ["rules", "query"])
def test_an_unknown_disabled_rule_is_one_line_naming_it_and_the_valid_names(
    tmp_path: Path, command: str, family: tuple[str, str, str]
) -> None:
    """Every family, every command: one line naming the setting, the unknown name and the
    valid ones; exit 2."""
    table, valid, typo = family
    config = tmp_path / "collector.toml"
    config.write_text(f'[{table}]\ndisabled = ["{valid}", "{typo}"]\n')
    code, out, err = collector_cli(
        command, "--config", str(config), "--db", str(tmp_path / "none.db")
    )
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert f"setting '{table}.disabled' names unknown rule '{typo}': use one of " in line
    listed = line.split("use one of ", 1)[1].split(", ")
    every = _rules(_settings(tmp_path, f'[capacity]\nplan = "{PLAN}"\n'))
    assert valid in listed
    assert listed == sorted(listed)
    assert set(listed) <= set(every)
    assert len(listed) == {"alerts": 12, "capacity": 5, "governance": 8}[table]


def test_each_family_builds_exactly_the_rules_its_settings_know_by_name() -> None:
    """The names a ``disabled`` list is checked against at load are the names of the rules
    each builder makes, in order: a rule added without its name could not be disabled."""
    assert [r.name for r in builtin_rules()] == list(names.BUILTIN)
    assert [r.name for r in capacity_rules(CapacityState())] == list(names.CAPACITY)
    assert [r.name for r in governance_rules(GovernanceView)] == list(names.GOVERNANCE)


def test_disabled_rules_are_left_out_of_every_family(tmp_path: Path) -> None:
    """Each ``disabled`` list leaves out exactly the rules it names."""
    s = _settings(
        tmp_path,
        '[alerts]\ndisabled = ["GpuXid", "NodeStale"]\n'
        '[capacity]\ndisabled = ["SitePowerRising"]\n'
        '[governance]\ndisabled = ["QuotaFull"]\n',
    )
    every = _rules(_settings(tmp_path, ""))
    assert sorted(set(every) - set(_rules(s))) == [
        "GpuXid",
        "NodeStale",
        "QuotaFull",
        "SitePowerRising",
    ]


def test_the_values_in_the_tables_are_what_the_rules_use(tmp_path: Path) -> None:
    """A threshold or timing set in a table reaches its rule; unset, the rule runs with the
    table's default (the only copy of it)."""
    defaults = _rules(_settings(tmp_path, ""))
    assert (defaults["NodeOffline"].for_s, defaults["GpuXid"].keep_firing_for_s) == (30.0, 900.0)
    assert (defaults["SitePowerHigh"].for_s, defaults["QuotaHigh"].for_s) == (60.0, 300.0)
    assert "at or above 85 °C" in defaults["GpuTemperature"].description
    assert "(warning above 90 %)" in defaults["SitePowerHigh"].description
    assert "at or above 90 %" in defaults["QuotaHigh"].description

    s = _settings(
        tmp_path,
        f"[alerts]\noffline_for_s = 7\ngpu_temp_c = 70\nxid_keep_firing_for_s = 11\n"
        f'[capacity]\nplan = "{PLAN}"\nfor_s = 9\nwarn_pct = 80\n'
        f"[governance]\nquota_for_s = 42\nhigh_pct = 75\n",
    )
    rules = _rules(s)
    assert (rules["NodeOffline"].for_s, rules["GpuXid"].keep_firing_for_s) == (7.0, 11.0)
    assert (rules["SitePowerHigh"].for_s, rules["QuotaHigh"].for_s) == (9.0, 42.0)
    assert "at or above 70 °C" in rules["GpuTemperature"].description
    assert "(warning above 80 %)" in rules["SitePowerHigh"].description
    assert "at or above 75 %" in rules["QuotaHigh"].description

    code, out, _ = collector_cli("rules", "--config", str(tmp_path / "collector.toml"))
    assert code == 0
    offline = next(line for line in out.splitlines() if line.startswith("NodeOffline"))
    assert " 7s " in offline


def test_settings_load_without_the_store_or_the_jobs() -> None:
    """Loading the collector's settings, ``disabled`` lists checked included, imports no store
    module and no job (a lower layer never comes in through the settings)."""
    code = (
        "import sys\n"
        "from collector.settings import CollectorSettings\n"
        "CollectorSettings(alerts={'disabled': ['GpuXid']}, capacity={'disabled': "
        "['SitePowerRising']}, governance={'disabled': ['QuotaFull']})\n"
        "print(sorted(m for m in sys.modules if m.startswith('collector.store') "
        "or m.endswith('.job')))\n"
    )
    assert python_child(code) == "[]\n"


def test_settings_without_a_metrics_server_load_none_of_its_code() -> None:
    """Unset ``metrics_listen`` and ``web_config_file`` are not checked by the HTTP server's
    module: ``collector rules`` or a command reading the store with ``--config`` does not load
    it (wsgiref, and structlog through its logger: ~15 % of ``collector rules``' CPU)."""
    code = (
        "import sys\n"
        "from collector.settings import CollectorSettings\n"
        "CollectorSettings()\n"
        "print(sorted(m for m in ('shared.metrics_http', 'wsgiref', 'structlog') "
        "if m in sys.modules))\n"
    )
    assert python_child(code) == "[]\n"
