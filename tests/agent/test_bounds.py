"""Bounds: what an out-of-range reading becomes, and how often that is logged."""

from __future__ import annotations

import math
import re

import pytest
from structlog.testing import capture_logs

from agent.bounds import Bounds
from shared.clock import FakeClock
from shared.schema import MAX_COUNTER, MAX_GPU_POWER_W, MAX_LOAD, NODE_ID_PATTERN


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock (the log's rate limit runs on it)."""
    return FakeClock()


@pytest.fixture
def bounds(clock: FakeClock) -> Bounds:
    """Bounds logging at most once a minute per field."""
    return Bounds(clock, log_every_s=60.0)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (0.0, 0.0),
        (MAX_GPU_POWER_W, MAX_GPU_POWER_W),
        (353.5, 353.5),
        (None, None),
        (MAX_GPU_POWER_W + 0.01, None),
        (1e300, None),
        (-0.01, None),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
    ],
)
def test_optional_number_outside_its_range_becomes_none(
    bounds: Bounds, value: float | None, kept: float | None
) -> None:
    """An optional reading at its bound is kept; past it, NaN or infinite, it is unknown."""
    assert bounds.optional(value, "gpus[].power_w", MAX_GPU_POWER_W) == kept


@pytest.mark.parametrize(
    ("value", "kept"),
    [(0, 0), (MAX_COUNTER, MAX_COUNTER), (MAX_COUNTER + 1, None), (-1, None), (2**70, None)],
)
def test_optional_integer_outside_its_range_becomes_none(
    bounds: Bounds, value: int, kept: int | None
) -> None:
    """Integers get the same treatment, exactly at the bound (no float rounding)."""
    assert bounds.optional_int(value, "gpus[].ecc.corrected_volatile", MAX_COUNTER) == kept


@pytest.mark.parametrize("value", [1980.0, math.nan, "1980", True])
def test_optional_integer_refuses_what_is_not_an_int(bounds: Bounds, value: object) -> None:
    """The collector rejects 1980.0 where it wants an int, so the agent drops it too."""
    assert bounds.optional_int(value, "gpus[].sm_clock_mhz", 10_000) is None


@pytest.mark.parametrize(
    ("value", "clamped"),
    [
        (100.0000001, 100.0),
        (-1e-9, 0.0),
        (42.5, 42.5),
        (math.inf, 100.0),
        (math.nan, 0.0),
    ],
)
def test_required_number_is_clamped_and_nan_goes_to_the_lower_bound(
    bounds: Bounds, value: float, clamped: float
) -> None:
    """A required field cannot be None: it is moved into its range."""
    result = bounds.clamped(value, "cpu.pct", 100.0, 0.0)
    assert result == clamped
    assert type(result) is float


def test_required_integer_saturates_at_its_bound(bounds: Bounds) -> None:
    """A u64 kernel counter past 2**53 - 1 is reported as the bound, still an int."""
    assert bounds.clamped(2**64 - 1, "net.nics[].rx_errors", MAX_COUNTER, 0) == MAX_COUNTER
    assert bounds.clamped(7, "net.nics[].rx_errors", MAX_COUNTER, 0) == 7


def test_list_keeps_its_first_entries(bounds: Bounds) -> None:
    """A list past its cap keeps the first ``limit`` entries, in order; a short one is untouched."""
    items = list(range(300))
    assert bounds.first(items, "gpus[].processes", 256) == list(range(256))
    short = [1, 2]
    assert bounds.first(short, "gpus[].processes", 256) is short


def test_descriptive_text_is_cut_and_identifiers_dropped(bounds: Bounds) -> None:
    """A model name is cut to its limit; a serial or path that does not fit is dropped."""
    assert bounds.text("Z" * 300, "cpu_model", 256) == "Z" * 256
    assert bounds.text("", "host", 253, empty="unknown") == "unknown"
    assert bounds.text("", "cpu_model", 256) == ""
    assert bounds.name("S" * 65, "gpus[].serial", 64) is None
    assert bounds.name("S" * 64, "gpus[].serial", 64) == "S" * 64
    assert bounds.name("", "nics[].name", 15) is None
    pattern = re.compile(NODE_ID_PATTERN)
    assert bounds.matching("n1", "node", pattern) == "n1"
    assert bounds.matching("n1\n", "node", pattern) is None


def test_each_field_is_logged_once_per_interval_with_the_count_suppressed(
    bounds: Bounds, clock: FakeClock
) -> None:
    """A sensor stuck on garbage logs once, then once a minute with how many it held back."""
    with capture_logs() as logs:
        for _ in range(5):
            bounds.optional(1e300, "gpus[].power_w", MAX_GPU_POWER_W)
            bounds.clamped(math.nan, "cpu.load1", MAX_LOAD, 0.0)
        clock.advance(59)
        bounds.optional(1e300, "gpus[].power_w", MAX_GPU_POWER_W)
        clock.advance(1)
        bounds.optional(2e300, "gpus[].power_w", MAX_GPU_POWER_W)
        bounds.first(list(range(10)), "disks", 4)
    assert [(e["event"], e["field"], e.get("action"), e["suppressed"]) for e in logs] == [
        ("reading_out_of_range", "gpus[].power_w", "dropped", 0),
        ("reading_out_of_range", "cpu.load1", "clamped", 0),
        ("reading_out_of_range", "gpus[].power_w", "dropped", 5),
        ("list_truncated", "disks", None, 0),
    ]
    assert logs[0]["value"] == "1e+300"
    assert logs[2]["value"] == "2e+300"
    assert (logs[3]["kept"], logs[3]["dropped"]) == (4, 6)
    assert all(e["log_level"] == "warning" for e in logs)


def test_a_huge_value_is_logged_cut(bounds: Bounds) -> None:
    """A 100,000-character mount path does not end up whole in the journal."""
    with capture_logs() as logs:
        bounds.name("/" + "m" * 100_000, "disks[].mount", 4096)
    assert len(logs[0]["value"]) == 80
    assert logs[0]["limit"] == 4096
