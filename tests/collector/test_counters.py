"""collector.counters.LoopCounter: a hot path's counter, scraped as a prometheus_client
Counter would be, exact at every scrape."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from collector.counters import LoopCounter, value


def _scrape(registry: CollectorRegistry) -> str:
    """The exposition with the ``_created`` timestamps (the creation times) masked."""
    text = generate_latest(registry).decode()
    return re.sub(r"(_created(?:\{[^}]*\})?) \S+", r"\1 T", text)


def test_exposition_is_a_counters_and_exact_at_each_scrape() -> None:
    """Same families, samples and values as a Counter counted alike, scrape after scrape."""
    mine, theirs = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
    fast = LoopCounter(
        "messages_received", "MQTT messages received.", namespace="ns", registry=mine
    )
    slow = Counter("messages_received", "MQTT messages received.", namespace="ns", registry=theirs)
    assert "ns_messages_received_created" in _scrape(mine)
    for step in (0, 1, 5, 0, 1_000):
        for _ in range(step):
            fast.inc()
            slow.inc()
        assert _scrape(mine) == _scrape(theirs)
        assert value(fast) == value(slow)
    fast.inc(3)
    assert value(fast) == 1_009


def test_the_registry_refuses_a_second_counter_of_the_name() -> None:
    """It registers its name as a Counter does: a duplicate is caught at start."""
    registry = CollectorRegistry(auto_describe=False)
    LoopCounter("samples_valid", "x", namespace="ns", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("samples_valid", "x", namespace="ns", registry=registry)


@pytest.fixture
def often_switched() -> Iterator[None]:
    """Threads switched as often as the interpreter can (races show up), then as before."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("often_switched")
def test_scrapes_from_other_threads_while_counting_see_each_count_once() -> None:
    """Scrapes racing each other and the counting thread: values only grow, and the last
    is the count (a difference added twice would overshoot)."""
    registry = CollectorRegistry(auto_describe=False)
    counter = LoopCounter("received", "x", namespace="ns", registry=registry)
    seen: list[list[int]] = [[] for _ in range(4)]
    done = threading.Event()

    def scrape(into: list[int]) -> None:
        while not done.is_set():
            into.append(value(counter))

    threads = [threading.Thread(target=scrape, args=(s,)) for s in seen]
    for t in threads:
        t.start()
    for _ in range(200_000):
        counter.inc()
    done.set()
    for t in threads:
        t.join()
    for values in seen:
        assert values == sorted(values)
        assert not values or values[-1] <= 200_000
    assert value(counter) == 200_000
    assert value(counter) == 200_000  # read again: nothing added twice
