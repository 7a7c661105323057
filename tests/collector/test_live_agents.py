"""The live view's detection of two agents publishing as one node: each way two agents
show, and each way one agent must not (restart, late replay, redelivery, clock steps)."""

from __future__ import annotations

import msgspec
import pytest

from collector.alerts.settings import AlertSettings
from collector.live import LiveView
from shared.schema import Sample
from tests.collector.test_live import NODE, T0, _sample

_I = 5.0
"""The samples' interval in the tests of two agents."""


def _interleave(a: list[Sample], b: list[Sample]) -> list[Sample]:
    """Two agents' samples in the order they were taken (by time stamp)."""
    return sorted(a + b, key=lambda s: s.ts)


def _run(epoch: int | None, n: int, start: float, seq0: int = 0) -> list[Sample]:
    """One agent run: ``n`` samples of ``epoch`` from ``seq0``, every ``_I`` from ``start``."""
    return [_sample(start + _I * k, seq=seq0 + k, epoch=epoch) for k in range(n)]


def _conflicts(view: LiveView, sent: list[Sample], *, feed: bool = False) -> int:
    for s in sent:
        view.on_sample(s, s.ts + 0.1, feed=feed)
    st = view.get(NODE)
    assert st is not None
    assert len(st.conflicts) == min(view.conflicts_total, view.max_conflicts)
    return view.conflicts_total


def test_two_agents_in_two_epochs_show_at_each_sample_after_the_first_switch() -> None:
    """A copied config: an agent in epoch 5 and a fresh one (epoch 0) publish as one node.
    The newest sample flips at each sample; each flip back to the run it left is a second
    agent's sample (the first switch looks like a restart, so it is not)."""
    view = LiveView()
    sent = _interleave(_run(5, 20, T0, seq0=700), _run(0, 20, T0 + 2))
    assert _conflicts(view, sent) == 38
    st = view.get(NODE)
    assert st is not None
    assert st.conflicts == tuple(s.ts + 0.1 for s in sent[-8:])
    assert view.conflicts_since(st, sent[-3].ts) == 3


def test_a_lower_epoch_agent_whose_clock_is_behind_shows_once_its_time_passes_the_takeover() -> (
    None
):
    """Epoch 3's clock is 12 s behind epoch 9's: epoch 9 holds the node (a higher epoch) and
    epoch 3's samples, stamped before epoch 9's newest, never become the newest again; those
    stamped after epoch 9 took over (at T0 + 1), numbered past where epoch 3 was, are a
    second agent's."""
    view = LiveView()
    behind = [msgspec.structs.replace(s, ts=s.ts - 12) for s in _run(3, 10, T0 - 12)]
    ahead = _run(9, 10, T0 + 1)
    arrival = sorted(behind + ahead, key=lambda s: s.ts + 12 * (s.epoch == 3))
    assert _conflicts(view, arrival) == 4  # epoch 3's seq 6-9, stamped T0 + 6 to T0 + 21
    st = view.get(NODE)
    assert st is not None
    assert st.sample is not None
    assert (st.sample.epoch, st.sample.seq) == (9, 9)


@pytest.mark.parametrize(
    ("b_start", "b_seq0", "conflicts"),
    [
        (T0 + 2, 0, 20),  # a cloned spool: both in epoch 4 from seq 0, 2 s apart
        (T0 - 1, 0, 20),
        (T0 + 2, 3, 19),  # the clone 3 ahead: the other's samples (but its first) show it
        (T0 + 2, -700, 20),  # two fresh spools (epoch 0), one an hour older: its seq far ahead
    ],
)
def test_two_agents_in_one_epoch_show_by_seq_going_back_while_time_goes_on(
    b_start: float, b_seq0: int, conflicts: int
) -> None:
    """Clones sharing an epoch: one of the two is always at or below the other's seq, and
    stamped after it; the node's newest sample is the one ahead."""
    view = LiveView()
    seq0 = max(0, -b_seq0)
    sent = _interleave(_run(4, 20, T0, seq0=seq0), _run(4, 20, b_start, seq0=max(0, b_seq0)))
    assert _conflicts(view, sent) == conflicts


def _restart_with_late_replay() -> list[Sample]:
    """Epoch 1 to seq 9; epoch 2 starts; epoch 1's seq 8-12, never seen, replayed late
    (the spool sends again past the watermark), then seq 3-4 again (redelivered)."""
    one = _run(1, 13, T0)
    two = _run(2, 6, T0 + 13 * _I)
    return one[:8] + two[:2] + one[8:] + two[2:4] + one[3:5] + two[4:]


def _crash_loop() -> list[Sample]:
    """Epochs 1-10, three samples each, each start a little after the last sample."""
    return [s for e in range(1, 11) for s in _run(e, 3, T0 + 16 * e)]


def _redelivered() -> list[Sample]:
    """Every sample twice (a broker redelivering after a reconnect), some out of order."""
    run = _run(6, 10, T0)
    return [*run[:4], *run[:4], *run[4:], run[6], run[9], *_run(7, 3, T0 + 60), run[9]]


def _clock_stepped_back() -> list[Sample]:
    """A run whose clock steps back 200 s, its seq 4 resent; then a restart with the clock
    set back 200 s behind the old run, the old run's seq 6 resent."""
    run = _run(3, 7, T0)
    stepped = [msgspec.structs.replace(s, ts=s.ts - 200) if s.seq > 4 else s for s in run]
    return [*stepped, stepped[4], *_run(4, 3, T0 - 200), stepped[6]]


def _set_back_then_replayed() -> list[Sample]:
    """A restart with the clock set back 100 s: epoch 4 runs for 150 s, then epoch 3's last
    two samples, never seen, are replayed (stamped after epoch 4 began by its clock, before
    its newest sample)."""
    three = _run(3, 10, T0 - 100)
    return three[:8] + _run(4, 30, T0 - 200) + three[8:]


def _wiped_spool() -> list[Sample]:
    """Epoch 0 to seq 3, epoch 1 to seq 1, then the spool wiped: epoch 0 from seq 0 again."""
    return _run(0, 4, T0) + _run(1, 2, T0 + 20) + _run(0, 3, T0 + 40)


def _before_epochs() -> list[Sample]:
    """An agent before epochs restarting (seq back to 0, newer time), redelivering one."""
    run = _run(None, 5, T0, seq0=30)
    return [*run, run[2], *_run(None, 4, T0 + 30)]


@pytest.mark.parametrize(
    "sent",
    [
        _restart_with_late_replay(),
        _crash_loop(),
        _redelivered(),
        _clock_stepped_back(),
        _set_back_then_replayed(),
        _wiped_spool(),
        _before_epochs(),
    ],
    ids=[
        "restart-late-replay",
        "crash-loop",
        "redelivered",
        "clock-back",
        "set-back-replayed",
        "wiped",
        "no-epoch",
    ],
)
def test_one_agent_never_shows_as_two(sent: list[Sample]) -> None:
    """Restarts, late replays, redeliveries, clock steps and a wiped spool of one agent
    count no sample as a second agent's."""
    view = LiveView()
    assert _conflicts(view, sent) == 0
    st = view.get(NODE)
    assert st is not None
    assert st.conflicts == ()


def test_one_agent_set_back_between_runs_shows_at_most_twice_per_late_burst() -> None:
    """The one way one agent looks like two: its clock set back 200 s at a restart, then
    samples of the old run never seen (resent past the watermark) come after the new run's
    first: stamped after the new run's, they take the node back to the old run, and the new
    run's next sample takes it again. Two per burst, below ``agent_conflict_min``'s 3."""
    view = LiveView()
    old = _run(3, 10, T0)
    new = _run(4, 6, T0 - 200)
    sent = old[:6] + new[:2] + old[6:] + new[2:4] + old[8:] + new[4:]
    assert _conflicts(view, sent) == 2
    assert AlertSettings().agent_conflict_min == 3


@pytest.mark.parametrize("restart_s", [0.5, 2.0, 7.0, 3600.0])
def test_one_agent_whose_spool_is_wiped_in_epoch_0_shows_at_most_twice(restart_s: float) -> None:
    """An agent that never restarted (epoch 0) on a node reimaged, or its spool directory
    deleted: it starts again at epoch 0, seq 0, stamped after its old run. Its samples go
    back in seq while time goes on, as a clone's do, but the run ahead sends no more: a
    sample is a second agent's only while the held one is fresh (a clone's is: both send
    every interval), so at most the first two show it, below ``agent_conflict_min``
    (every sample showed it, until its seq passed the old run's: 20 here, review9)."""
    view = LiveView()
    old = _run(0, 100, T0)
    new = _run(0, 20, old[-1].ts + restart_s)
    assert _conflicts(view, old + new) <= 2
    assert AlertSettings().agent_conflict_min == 3


def test_in_a_share_group_the_feed_counts_and_a_sample_seen_twice_counts_once() -> None:
    """The leader gets each sample from its share and from its feed: only the feed counts,
    so a sample seen twice counts at most once (the feed's copy, when it comes first: the
    second copy of a sample finds it held); a standby (its share alone) counts none."""
    sent = _interleave(_run(5, 10, T0, seq0=700), _run(0, 10, T0 + 2))
    leader = LiveView(from_feed=True)
    leader.feed_started()
    for i, s in enumerate(sent):
        copies = [(s, False), (s, True)] if i % 2 else [(s, True), (s, False)]
        for sample, feed in copies:
            leader.on_sample(sample, sample.ts + 0.1, feed=feed)
    feed_first = range(0, len(sent), 2)
    # From the third sample on: the second (the first switch) looks like a restart.
    assert leader.conflicts_total == len([i for i in feed_first if i >= 2])
    standby = LiveView(from_feed=True)
    assert _conflicts(standby, sent) == 0
