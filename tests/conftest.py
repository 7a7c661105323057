"""Fixtures shared by all tests: a real Mosquitto on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.localbroker import MosquittoBroker, find_mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto with persistence in ``tmp_path``; stopped after the test."""
    if find_mosquitto() is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; .ci/run must install it")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with MosquittoBroker(tmp_path / "broker") as broker:
        yield broker
