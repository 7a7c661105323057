"""The daemon's GIL policy: a 1 ms switch interval (collector/cooperate.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from collector import cooperate


@pytest.fixture
def interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("interval")
def test_configure_makes_a_busy_thread_hand_over_the_gil_after_2_ms_not_5() -> None:
    """CPython's default is 5 ms; the daemon's 2 ms."""
    sys.setswitchinterval(0.005)
    cooperate.configure()
    assert sys.getswitchinterval() == pytest.approx(0.002)
