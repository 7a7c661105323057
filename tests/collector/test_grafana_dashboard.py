"""deploy/grafana/capwatch.json loads, picks its Prometheus through a data-source variable,
and every PromQL expression in it names only metrics capwatch exposes (read from the real
collector and agent expositions, not from a list kept by hand)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentExposition, AgentStats
from agent.simulate import FleetSimulator
from collector.capacity.compute import compute_picture
from collector.capacity.metrics import capacity_families, threshold_families
from collector.governance.metrics import quota_families
from collector.governance.report import QuotaStanding
from collector.health import Health
from collector.ingest.writer import Writer, WriterItem
from collector.service import Collector
from collector.settings import CollectorSettings
from collector.store.db import Store
from tests.collector.capacity.helpers import filled_view, site_plan
from tests.helpers import prometheus_tool

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "capwatch.json"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
    "summary": ("_sum", "_count", "_created"),
}
_KEYWORDS = frozenset(
    (
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
    )
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = _STRING.sub("", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names = set()
    for m in _IDENT.finditer(text):
        is_call = text[m.end() :].lstrip().startswith("(")
        if not is_call and m.group().lower() not in _KEYWORDS:
            names.add(m.group())
    return names


def test_metric_names_finds_selectors_and_skips_the_rest() -> None:
    """The extractor itself: functions, grouping labels, matchers, ranges are not names."""
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job"}[$__rate_interval])))'
        " / on (job) group_left b_total + time() - c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def _exposed(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


class _Snapshot:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


@pytest.fixture
async def exposed(tmp_path: Path) -> set[str]:
    """Every metric name the collector's and an agent's /metrics can carry."""
    settings = CollectorSettings(db_path=tmp_path / "c.db", metrics_listen="127.0.0.1:0")
    collector = Collector(settings)
    async with Store(settings.db_path) as store:
        metrics = collector.exposition(store)
        # A collector with a site plan also serves the capacity picture's families.
        sim = FleetSimulator(4, seed=3, interval_s=5)
        view, _ = filled_view(sim, 1_700_000_000.0)
        picture = compute_picture(site_plan(), view.nodes(), 1_700_000_001.0)
        standing = QuotaStanding(
            tenant="a", cohort=None, resource="gpus", basis="measured", nominal=8, in_use=7,
            borrowed=0, lendable=1, available=1, potential=8, borrowing_limit=None,
            lending_limit=None, period=None,
        )  # fmt: skip
        queue: asyncio.Queue[WriterItem] = asyncio.Queue(maxsize=16)
        writer = Writer(store, queue, collector.ingestor, collector.clock)
        health = Health(
            collector.clock, limit_s=30, connected=collector.connected, writer=writer, queue=queue
        )
        families = (
            health.families()
            + await metrics.snapshot()
            + capacity_families(picture)
            + threshold_families(90.0, 98.0)
            + quota_families([standing])
        )
        metrics.registry.register(_Snapshot(families))
        collector_text = generate_latest(metrics.registry).decode()
    sim = FleetSimulator(1, gpus_per_node=2, seed=2, interval_s=5)
    expo = AgentExposition(lambda: AgentStats(1, 1, 0, 0, True, 0.1))
    expo.inventory = sim.inventory(0, 1_700_000_000.0)
    expo.update(sim.sample(0, 1_700_000_000.0, 0))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(expo)
    return _exposed(collector_text) | _exposed(generate_latest(registry).decode())


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out += panel.get("targets", [])
        for inner in panel.get("panels", []):
            out += inner.get("targets", [])
    return out


def test_dashboard_has_a_prometheus_datasource_variable_used_by_every_query() -> None:
    """One `datasource` variable of type prometheus; every panel and query points at it, so
    the dashboard works whatever the operator named the data source."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    targets = _targets(dashboard)
    assert len(targets) >= 20
    assert {t["datasource"]["uid"] for t in targets} == {"${datasource}"}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_query_names_only_metrics_capwatch_exposes(exposed: set[str]) -> None:
    """Each metric name in each expression (and in the job variable's query) is one the
    collector or the agent serves; the dashboard covers fleet, ingest, alerts, capacity and
    quotas."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for t in _targets(dashboard)]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    used: set[str] = set()
    for expr in exprs:
        # Grafana's label_values(METRIC, LABEL): only the first argument is a selector.
        grafana = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr)
        names = metric_names(grafana.group(1) if grafana else expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exposed, f"{expr!r} names {sorted(names - exposed)}, not exposed"
        used |= names
    for needed in (
        "capwatch_fleet_nodes",
        "capwatch_collector_batch_commit_seconds_bucket",
        "capwatch_collector_messages_rejected_total",
        "capwatch_alerts",
        "capwatch_capacity_it_draw_watts",
        "capwatch_capacity_cap_watts",
        "capwatch_quota_in_use",
        "DCGM_FI_DEV_POWER_USAGE",
    ):
        assert needed in used


def test_capacity_threshold_lines_follow_the_collectors_settings(tmp_path: Path) -> None:
    """The capacity panel's warning and critical lines are the cap times the thresholds the
    collector exports from its settings (no fixed 0.9/0.98): Prometheus's own engine
    (``promtool test rules``) evaluates the dashboard's expressions over a collector whose
    settings say 85 % and 95 %, and one with the defaults, in the same Prometheus."""
    dashboard = json.loads(DASHBOARD.read_text())
    lines = {
        t["legendFormat"].split()[0]: t["expr"]
        for t in _targets(dashboard)
        if "capwatch_capacity_threshold_ratio" in t["expr"]
    }
    assert set(lines) == {"warning", "critical"}
    # the series as two collectors' /metrics carry them, from their settings
    series = []
    for instance, (warn, critical) in (("c1:9101", (85.0, 95.0)), ("c2:9101", (90.0, 98.0))):
        labels = f'job="capwatch-collector", instance="{instance}"'
        series.append({"series": f"capwatch_capacity_cap_watts{{{labels}}}", "values": "2000000"})
        (family,) = threshold_families(warn, critical)
        for sample in family.samples:
            level = sample.labels["level"]
            series.append(
                {
                    "series": f'capwatch_capacity_threshold_ratio{{{labels}, level="{level}"}}',
                    "values": f"{sample.value}",
                }
            )
    tests = [
        {
            "expr": lines[level].replace("$job", ".*"),
            "eval_time": "0m",
            "exp_samples": [
                {"labels": f'{{instance="{i}", job="capwatch-collector"}}', "value": v}
                for i, v in values
            ],
        }
        for level, values in (
            ("warning", (("c1:9101", 1_700_000), ("c2:9101", 1_800_000))),
            ("critical", (("c1:9101", 1_900_000), ("c2:9101", 1_960_000))),
        )
    ]
    spec = tmp_path / "thresholds_test.yml"
    spec.write_text(
        json.dumps(
            {
                "rule_files": [],
                "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
            }
        )
    )
    proc = subprocess.run(
        [prometheus_tool("promtool"), "test", "rules", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
