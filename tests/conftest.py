"""Fixtures shared by all tests: a real Mosquitto on a free loopback port.

Every test that uses a broker carries the ``integration`` marker (added here for users of
the ``mosquitto`` fixture), so ``-m "not integration"`` runs the rest in seconds. When
Mosquitto is missing those tests are skipped, and the run ends with one loud line saying
how many and the command that fixes it; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.localbroker import MosquittoBroker, find_mosquitto
from tests.helpers import NO_MOSQUITTO, NO_PROMETHEUS, skip_without_mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto with persistence in ``tmp_path``; stopped after the test."""
    if find_mosquitto() is None:
        skip_without_mosquitto()
    with MosquittoBroker(tmp_path / "broker") as broker:
        yield broker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start a broker are integration tests, whatever module they live in."""
    for item in items:
        if "mosquitto" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Say loudly, as the very last line, when integration tests were skipped for no broker
    (every skip through :func:`tests.helpers.skip_without_mosquitto`)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [
        r
        for r in reporter.stats.get("skipped", [])
        if NO_MOSQUITTO in str(getattr(r, "longrepr", ""))
    ]
    if skipped:
        reporter.write_line(
            f"!!! {len(skipped)} integration tests were SKIPPED: Mosquitto is not installed. "
            "Fix: sudo apt-get install -y mosquitto   (then run scripts/test.sh again)",
            red=True,
            bold=True,
        )
    no_prometheus = [
        r
        for r in reporter.stats.get("skipped", [])
        if NO_PROMETHEUS in str(getattr(r, "longrepr", ""))
    ]
    if no_prometheus:
        reporter.write_line(
            f"!!! {len(no_prometheus)} metrics tests were SKIPPED: Prometheus (promtool) is not "
            "installed. Fix: sudo apt-get install -y prometheus   (then run scripts/test.sh again)",
            red=True,
            bold=True,
        )
