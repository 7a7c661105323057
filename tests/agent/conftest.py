"""Fixtures of the agent's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.gpu import NvmlBackend


@pytest.fixture
def backends() -> Iterator[list[NvmlBackend]]:
    """NVML backends a test opens (:func:`tests.agent.helpers.open_backend`); closed
    afterwards so no XID thread outlives its test."""
    opened: list[NvmlBackend] = []
    yield opened
    for backend in opened:
        backend.close()
