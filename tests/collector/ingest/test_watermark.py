"""The store's watermark per node: contiguity within an epoch, holes, give-ups, restarts."""

from __future__ import annotations

from collector.ingest.watermark import Watermarks
from collector.store.db import SampleRow
from collector.store.watermarks import WatermarkRow

T0 = 1_800_000_000.0
T0_MS = round(T0 * 1000)


def _row(node: str, epoch: int | None, seq: int, ts_s: float | None = None) -> SampleRow:
    ts_ms = round((T0 - 1000 + seq if ts_s is None else ts_s) * 1000)
    return SampleRow(node, ts_ms, seq, 0, 1.0, None, 0, 0, 0, None, None, None, None, b"", epoch)


def _marks(hole_s: float = 60.0) -> Watermarks:
    return Watermarks(hole_s=hole_s)


def _due(w: Watermarks, now: float = T0) -> dict[str, tuple[int, int, int]]:
    return {r.node: (r.epoch, r.seq, r.top) for r in w.due(now)}


def test_contiguous_rows_move_the_watermark_and_each_node_is_due_once() -> None:
    """Seqs 0..9 of two nodes, in three batches: one due row per node, at seq 9."""
    w = _marks()
    for start in (0, 4, 7):
        w.note([_row(n, 2, s) for s in range(start, min(start + 4, 10)) for n in ("a", "b")], T0)
    assert _due(w) == {"a": (2, 9, 9), "b": (2, 9, 9)}
    assert _due(w) == {}  # nothing changed since


def test_a_duplicate_is_not_news() -> None:
    """Rows the store had already (redeliveries) leave nothing due."""
    w = _marks()
    w.note([_row("a", 0, s) for s in range(3)], T0)
    w.due(T0)
    w.note([_row("a", 0, 1), _row("a", 0, 2)], T0)
    assert _due(w) == {}


def test_a_hole_holds_the_watermark_and_top_says_so_until_it_is_filled() -> None:
    """0..3, then 7..8: seq 3, top 8; 4..6 arriving (resent) fill it: seq 8."""
    w = _marks()
    w.note([_row("a", 1, s) for s in (0, 1, 2, 3, 7, 8)], T0)
    assert _due(w) == {"a": (1, 3, 8)}
    w.note([_row("a", 1, 5)], T0)
    assert _due(w) == {"a": (1, 3, 8)}  # top unchanged, but a range grew: republished
    w.note([_row("a", 1, 4), _row("a", 1, 6)], T0)
    assert _due(w) == {"a": (1, 8, 8)}


def test_a_hole_nobody_fills_is_given_up_after_hole_s() -> None:
    """The agent no longer has 4..6: after hole_s the watermark moves past them, counted."""
    w = _marks(hole_s=60)
    w.note([_row("a", 1, s) for s in (0, 1, 2, 3, 7, 8, 12)], T0)
    assert _due(w, T0 + 59) == {"a": (1, 3, 12)}
    assert _due(w, T0 + 60) == {"a": (1, 12, 12)}  # both holes were seen at T0
    assert (w.holes_given_up, w.missing_given_up) == (2, 6)


def test_a_new_epoch_starts_a_new_watermark_and_a_late_old_one_changes_nothing() -> None:
    """Epoch 3 after epoch 2: counted from its seq 0; a late epoch-2 row is ignored."""
    w = _marks()
    w.note([_row("a", 2, s) for s in range(5)], T0)
    w.note([_row("a", 3, s, ts_s=T0 - 900 + s) for s in (0, 1)], T0)
    assert _due(w) == {"a": (3, 1, 1)}
    w.note([_row("a", 2, 5, ts_s=T0 - 1000 + 4.5)], T0)
    assert _due(w) == {}


def test_an_epoch_that_does_not_start_at_zero_is_a_hole_from_zero() -> None:
    """The first row of an epoch at seq 5: nothing contiguous yet (seq -1), top 5."""
    w = _marks()
    w.note([_row("a", 4, 5), _row("a", 4, 6)], T0)
    assert _due(w) == {"a": (4, -1, 6)}


def test_an_agent_counting_epochs_again_from_zero_is_followed() -> None:
    """A wiped spool: epoch 0 again, with samples newer than epoch 9's."""
    w = _marks()
    w.note([_row("a", 9, s) for s in range(3)], T0)
    w.note([_row("a", 0, 0, ts_s=T0), _row("a", 0, 1, ts_s=T0 + 1)], T0)
    assert _due(w) == {"a": (0, 1, 1)}


def test_a_hole_of_the_run_before_filled_late_does_not_hand_the_node_back_to_it() -> None:
    """Epoch 8 started with its clock set back 200 s behind epoch 7's samples; epoch 7's
    seq 1 (lost on the way, a hole) then arrives: stamped after epoch 8's samples, but at
    or below where epoch 7 had reached, so a late sample of it, not a start."""
    w = _marks()
    w.note([_row("a", 7, s, ts_s=T0 + s) for s in (0, 2, 3)], T0)
    w.note([_row("a", 8, s, ts_s=T0 - 200 + s) for s in (0, 1)], T0)
    assert _due(w) == {"a": (8, 1, 1)}
    w.note([_row("a", 7, 1, ts_s=T0 + 1)], T0)
    assert _due(w) == {}
    w.note([_row("a", 7, 4, ts_s=T0 + 4)], T0)  # past where it was: that run goes on
    assert _due(w) == {"a": (7, -1, 4)}


def test_a_wiped_spool_numbering_its_first_epoch_again_is_followed() -> None:
    """Epoch 0 ran to seq 3, epoch 1 took over, then the spool was wiped: epoch 0 from
    seq 0 again, stamped after both runs. Not a late sample of the run epoch 1 took over
    from (its time is past that run's newest): the node's next run."""
    w = _marks()
    w.note([_row("a", 0, s, ts_s=T0 + s) for s in range(4)], T0)
    w.note([_row("a", 1, s, ts_s=T0 + 10 + s) for s in (0, 1)], T0)
    assert _due(w) == {"a": (1, 1, 1)}
    w.note([_row("a", 0, s, ts_s=T0 + 20 + s) for s in (0, 1)], T0)
    assert _due(w) == {"a": (0, 1, 1)}


def test_rows_without_an_epoch_have_no_watermark() -> None:
    """An agent before epochs does not read watermarks: nothing is published for it."""
    w = _marks()
    w.note([_row("old", None, s) for s in range(3)], T0)
    assert _due(w) == {}
    assert w.get("old") is None


def test_ranges_are_bounded_by_giving_up_the_lowest_hole() -> None:
    """Every other seq arriving: at most max_ranges ranges stay, the lowest holes go."""
    w = Watermarks(hole_s=60, max_ranges=4)
    w.note([_row("a", 0, s) for s in range(0, 20, 2)], T0)
    epoch, seq, top = w.get("a") or (0, 0, 0)
    assert (epoch, top) == (0, 18)
    assert seq == 10  # 0 and then holes at 1,3,5,7,9 given up: 10 contiguous after 9
    assert w.holes_given_up == 5


def test_restore_goes_on_from_the_table_and_the_rows_above_its_hole() -> None:
    """Restored at seq 3 with 5, 6 stored above: 4 arriving moves it to 6."""
    w = _marks()
    w.restore([WatermarkRow("a", 1, 3, 6, 0)], [("a", 5), ("a", 6)], T0)
    assert _due(w) == {}
    w.note([_row("a", 1, 4)], T0)
    assert _due(w) == {"a": (1, 6, 6)}


def test_retry_offers_rows_that_could_not_be_published_again() -> None:
    """A publish that failed: the same nodes are due at the next call."""
    w = _marks()
    w.note([_row("a", 0, 0)], T0)
    rows = w.due(T0)
    w.retry(rows)
    assert _due(w) == {"a": (0, 0, 0)}


def test_a_round_is_taken_a_part_at_a_time_and_a_node_only_once_per_round() -> None:
    """2,500 changed nodes taken 1,000 at a time: 1,000, 1,000, 500, each node once, with
    the newest value at the time it is taken; a node that changes again meanwhile waits
    for the next round."""
    w = _marks()
    nodes = [f"n{i:04d}" for i in range(2500)]
    w.note([_row(n, 1, 0) for n in nodes], T0)
    first = w.due(T0, 1000)
    assert (len(first), w.pending) == (1000, 1500)
    again = first[0].node
    w.note([_row(again, 1, 1)], T0)  # changes again within the round
    later = w.due(T0, 1000) + w.due(T0, 1000)
    assert (len(later), w.pending) == (1500, 0)
    assert sorted(r.node for r in first + later) == nodes
    assert [(r.node, r.seq) for r in w.due(T0, 1000)] == [(again, 1)]  # the next round
    assert w.due(T0, 1000) == []


def test_a_hostile_jump_in_seq_counts_only_what_the_node_clock_allows() -> None:
    """seq 2**62 and then 0, ten intervals apart on the node's clock: the hole given up
    counts at most the ten intervals that passed (as the live view's gaps do), not 2**62;
    the watermark still moves past it."""
    w = _marks(hole_s=60)
    interval_s, elapsed_s = 1.0, 10.0
    w.note([_row("evil", 3, 2**62, ts_s=T0 + elapsed_s)], T0)
    w.note([_row("evil", 3, 0, ts_s=T0)], T0)
    assert _due(w, T0 + 60) == {"evil": (3, 2**62, 2**62)}
    assert (w.holes_given_up, w.missing_given_up) == (1, round(elapsed_s / interval_s))


def test_a_hole_with_no_sample_below_it_counts_the_one_it_surely_lacks() -> None:
    """An epoch whose first stored sample is seq 2**62: nothing bounds how long the agent
    ran before it, so the hole counts one sample, whatever the number says; a hole read back
    at start (no times known) likewise."""
    w = _marks(hole_s=60)
    w.note([_row("evil", 3, 2**62, ts_s=T0)], T0)
    w.restore([WatermarkRow("b", 1, 3, 2**62, T0_MS)], [("b", 2**62)], T0)
    assert _due(w, T0 + 60) == {"evil": (3, 2**62, 2**62), "b": (1, 2**62, 2**62)}
    assert (w.holes_given_up, w.missing_given_up) == (2, 2)


def _newest(w: Watermarks, now: float = T0) -> dict[str, tuple[int, int | None, int | None]]:
    return {r.node: (r.top, r.top_ts_ms, r.seen_ts_ms) for r in w.due(now)}


def test_the_newest_sample_is_the_highest_seq_whatever_the_clock_did() -> None:
    """A clock stepped back 100 s after seq 3: the newest is seq 5, stamped before seq 3;
    the newest time seen stays seq 3's. A hole filled later changes neither."""
    w = _marks()
    w.note([_row("a", 1, s, T0 + s) for s in range(4)], T0)
    w.note([_row("a", 1, s, T0 - 100 + s) for s in (5,)], T0)
    assert _newest(w) == {"a": (5, T0_MS - 95_000, T0_MS + 3_000)}
    w.note([_row("a", 1, 4, T0 + 4)], T0)  # sent again: it was taken before the step
    assert _newest(w) == {"a": (5, T0_MS - 95_000, T0_MS + 4_000)}


def test_the_newest_time_seen_outlives_the_epoch_that_set_it() -> None:
    """An agent restarting behind its last run's clock: its new epoch is the newest, and
    the last run's later time stays the newest seen; a late sample of that run changes
    nothing."""
    w = _marks()
    w.note([_row("a", 1, s, T0 + s) for s in range(3)], T0)
    w.note([_row("a", 2, 0, T0 - 200)], T0)
    assert _newest(w) == {"a": (0, T0_MS - 200_000, T0_MS + 2_000)}
    w.note([_row("a", 1, 3, T0 - 300)], T0)
    assert _newest(w) == {}


def test_restore_takes_the_newest_sample_back_and_reads_a_row_from_before_it() -> None:
    """A row with the newest sample goes on from it; one written before those columns knows
    its epoch's newest time as the newest seen, and its newest sample once one arrives."""
    w = _marks()
    w.restore(
        [
            WatermarkRow("a", 1, 5, 5, T0_MS + 9_000, T0_MS - 95_000, T0_MS + 9_000),
            WatermarkRow("b", 1, 5, 5, T0_MS + 9_000),
        ],
        [],
        T0,
    )
    w.note([_row("a", 1, 6, T0 - 94), _row("b", 1, 6, T0 - 94)], T0)
    assert _newest(w) == {
        "a": (6, T0_MS - 94_000, T0_MS + 9_000),
        "b": (6, T0_MS - 94_000, T0_MS + 9_000),
    }
