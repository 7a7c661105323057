"""The live view: newest sample wins, sticky ECC state, XIDs, reject windows, the node bound."""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import pytest

from collector.live import LiveView, NodeState
from shared.schema import Inventory, Sample
from tests.shared.wire_samples import inventory_dict, sample_dict

T0 = 1_800_000_000.0
NODE = "x1000c0s0b0n0"


def _sample(ts: float = T0, node: str = NODE, **changes: Any) -> Sample:
    d = sample_dict()
    d.update(ts=ts, node=node, xids=[])
    d.update(changes)
    return msgspec.convert(d, Sample)


def test_newest_sample_wins_and_older_or_equal_ones_are_ignored() -> None:
    """A late (replayed) or duplicate sample does not replace the newer one held."""
    view = LiveView()
    assert view.on_sample(_sample(T0 + 10, seq=2), received=T0 + 10)
    assert not view.on_sample(_sample(T0, seq=1), received=T0 + 11)
    assert not view.on_sample(_sample(T0 + 10, seq=3), received=T0 + 12)
    st = view.get(NODE)
    assert st is not None
    assert st.sample is not None
    assert (st.sample.seq, st.sample_received) == (2, T0 + 10)


def test_a_node_whose_clock_steps_back_stays_current() -> None:
    """Within one agent run the next seq is the latest whatever its time: a node stamped one
    sample 299 s ahead (then NTP stepped it back) is not frozen, nor stale, for 299 s."""
    view = LiveView()
    view.on_sample(_sample(T0 + 299, seq=1, epoch=4), received=T0)
    assert view.on_sample(_sample(T0 + 5, seq=2, epoch=4), received=T0 + 5)
    assert not view.on_sample(_sample(T0 + 300, seq=1, epoch=4), received=T0 + 6)  # resent
    assert not view.on_sample(_sample(T0 - 100, seq=9, epoch=3), received=T0 + 7)  # late
    assert view.on_sample(_sample(T0 - 60, seq=0, epoch=5), received=T0 + 8)  # next run
    st = view.get(NODE)
    assert st is not None
    assert st.sample is not None
    assert (st.sample.epoch, st.sample.seq, st.sample_received) == (5, 0, T0 + 8)


def test_summaries_follow_the_latest_sample() -> None:
    """Hottest GPU and the OR of clock-event bits are those of the sample held."""
    view = LiveView()
    d = sample_dict()
    d["gpus"][3].update(temp_c=91.5, clock_event_reasons=0x40)
    d.update(xids=[])
    view.on_sample(msgspec.convert(d, Sample), T0)
    st = view.get(NODE)
    assert st is not None
    assert (st.max_temp_c, st.clock_reasons_any) == (91.5, 0x44)
    view.on_sample(_sample(T0 + 5), T0 + 5)
    st = view.get(NODE)
    assert st is not None
    assert (st.max_temp_c, st.clock_reasons_any) == (68.0, 0x4)


def test_ecc_and_remap_state_survive_fast_ticks() -> None:
    """A sample without ECC blocks (fast tick) keeps the last reported ECC state."""
    view = LiveView()
    d = sample_dict()
    d["gpus"][5]["ecc"]["uncorrected_volatile"] = 4
    d["gpus"][1]["remapped_rows"]["pending"] = True
    d.update(xids=[])
    view.on_sample(msgspec.convert(d, Sample), T0)
    fast = sample_dict()
    fast.update(ts=T0 + 5, xids=[])
    for g in fast["gpus"]:
        g["ecc"] = None
        g["remapped_rows"] = None
    view.on_sample(msgspec.convert(fast, Sample), T0 + 5)
    st = view.get(NODE)
    assert st is not None
    assert st.ecc[5].uncorrected_volatile == 4
    assert st.remapped_rows[1].pending
    assert st.ecc_uncorrected_any
    assert st.remap_bad_any
    view.on_sample(_sample(T0 + 10), T0 + 10)  # slow tick: all clear again
    st = view.get(NODE)
    assert st is not None
    assert not st.ecc_uncorrected_any
    assert not st.remap_bad_any


def test_xids_are_kept_once_even_from_late_samples() -> None:
    """An XID in a replayed sample is kept; the same event sent twice counts once."""
    view = LiveView(max_xids_per_gpu=3)
    view.on_sample(_sample(T0 + 10), T0 + 10)
    xid = [{"gpu_index": 3, "xid": 79, "ts": T0 - 1}]
    view.on_sample(_sample(T0, xids=xid), T0 + 11)  # late, but the XID happened
    view.on_sample(_sample(T0, xids=xid), T0 + 12)  # resent
    st = view.get(NODE)
    assert st is not None
    assert [(x.gpu_index, x.xid, x.received) for x in st.xids] == [(3, 79, T0 + 11)]
    assert view.xids_since(st, T0 + 11.5) == []


def test_an_xid_stamped_after_its_own_sample_cannot_mask_the_next_ones() -> None:
    """An XID happened before the sample that reports it: one stamped later (2099, in a sample
    stamped now: the sample's time is checked against the collector's clock, its XIDs' were
    not) counts as of its sample's time. Held at 2099, it made every later event of its code
    on its GPU "older", ignored: GpuXid never fired for them again."""
    view = LiveView(max_xids_per_gpu=3)
    far = [{"gpu_index": 3, "xid": 79, "ts": 4_000_000_000.0}]
    view.on_sample(_sample(T0, seq=1, xids=far), T0)
    st = view.get(NODE)
    assert st is not None
    assert [(x.xid, x.ts) for x in st.xids] == [(79, T0)]
    again = [{"gpu_index": 3, "xid": 79, "ts": T0 + 3_599}]
    view.on_sample(_sample(T0 + 3_600, seq=2, xids=again), T0 + 3_600)
    st = view.get(NODE)
    assert st is not None
    assert [(x.xid, x.ts, x.received) for x in view.xids_since(st, T0 + 3_000)] == [
        (79, T0 + 3_599, T0 + 3_600)
    ]


def test_each_gpu_keeps_its_newest_codes_and_a_storm_on_one_gpu_spares_the_others() -> None:
    """A GPU repeating one code holds one entry (its newest); a GPU naming more codes than
    ``max_xids_per_gpu`` keeps its newest ones, the rest counted; another GPU's XID stays
    however many events its neighbour sends."""
    view = LiveView(max_xids_per_gpu=3)
    view.on_sample(_sample(T0, xids=[{"gpu_index": 7, "xid": 79, "ts": T0 - 1}]), T0)
    repeated = [{"gpu_index": 0, "xid": 48, "ts": T0 + i} for i in range(5)]
    view.on_sample(_sample(T0 + 5, xids=repeated), T0 + 5)
    st = view.get(NODE)
    assert st is not None
    assert [(x.gpu_index, x.xid, x.ts) for x in st.xids] == [(7, 79, T0 - 1), (0, 48, T0 + 4)]
    assert view.xids_dropped == 0
    storm = [{"gpu_index": 0, "xid": code, "ts": T0 + 9} for code in (61, 62, 63, 64, 74)]
    view.on_sample(_sample(T0 + 10, xids=storm), T0 + 10)
    st = view.get(NODE)
    assert st is not None
    assert [(x.gpu_index, x.xid) for x in st.xids] == [(7, 79), (0, 63), (0, 64), (0, 74)]
    assert view.xids_dropped == 3  # 48, then 61 and 62: GPU 0's oldest codes


def test_node_states_are_not_tracked_by_the_cyclic_garbage_collector() -> None:
    """Each update stores a new node state: untracked, 12,500 nodes sampling every second
    add nothing for a collection to scan (collector/heap.py)."""
    view = LiveView()
    view.on_sample(_sample(T0, xids=[{"gpu_index": 3, "xid": 79, "ts": T0 - 1}]), T0)
    view.on_status(NODE, "online", T0)
    view.on_inventory(msgspec.convert(inventory_dict(), Inventory), T0)
    view.on_reject(NODE, "clock_skew", T0)
    view.on_reject("x1000c0s0b0n1", "invalid", T0)
    states = [view.get(NODE), view.get("x1000c0s0b0n1")]
    assert all(st is not None and not gc.is_tracked(st) for st in states)


def test_a_node_states_copy_holds_every_field_and_is_another_object() -> None:
    """Each update changes a copy of the node's state (a snapshot keeps the original): the
    copy has every field of the original, the same objects, fields added later included."""
    fields = NodeState.__struct_fields__
    values = {name: object() for name in fields[1:]}
    st = NodeState("n1", **values)  # type: ignore[arg-type]  # msgspec checks no types here
    copied = st._copy()
    assert copied is not st
    assert [getattr(copied, f) for f in fields] == ["n1", *values.values()]
    assert not gc.is_tracked(copied)


def test_a_snapshot_is_unchanged_by_later_updates() -> None:
    """The evaluator reads a snapshot in a thread while the writer goes on updating."""
    view = LiveView(reject_bucket_s=10, reject_buckets=6)
    d = sample_dict()
    d["gpus"][5]["ecc"]["uncorrected_volatile"] = 4
    d.update(xids=[{"gpu_index": 3, "xid": 79, "ts": T0 - 1}])
    view.on_sample(msgspec.convert(d, Sample), T0)
    view.on_status(NODE, "online", T0)
    view.on_reject(NODE, "clock_skew", T0)
    snap = view.snapshot()
    before = snap.get(NODE)
    assert before is not None
    view.on_sample(_sample(T0 + 5, xids=[{"gpu_index": 0, "xid": 48, "ts": T0 + 4}]), T0 + 5)
    view.on_status(NODE, "offline", T0 + 6)
    view.on_reject(NODE, "clock_skew", T0 + 1)
    view.on_reject(NODE, "invalid", T0 + 2)
    view.on_status("x1000c0s0b0n1", "online", T0 + 7)
    st = snap.get(NODE)
    assert st is before
    assert st.sample is not None
    assert (st.sample.ts, st.status, st.ecc[5].uncorrected_volatile) == (T0, "online", 4)
    assert [x.xid for x in st.xids] == [79]
    assert snap.rejects(st, T0 + 5, 60) == 1
    assert len(snap) == 1
    now = view.get(NODE)
    assert now is not None
    assert now.status == "offline"
    assert [x.xid for x in now.xids] == [79, 48]
    assert view.rejects(now, T0 + 5, 60) == 3
    assert len(view) == 2


def test_status_and_inventory_are_recorded_with_their_times() -> None:
    """Status (incl. the last will's offline) and inventory are the latest ones reported."""
    view = LiveView()
    view.on_status(NODE, "online", T0)
    view.on_status(NODE, "offline", T0 + 3)
    view.on_inventory(msgspec.convert(inventory_dict(), Inventory), T0 + 1)
    st = view.get(NODE)
    assert st is not None
    assert (st.status, st.status_ts, st.inventory_ts) == ("offline", T0 + 3, T0 + 1)
    assert st.inventory is not None
    assert len(st.inventory.gpus) == 8


def test_rejects_are_counted_per_reason_in_time_buckets() -> None:
    """Window sums by reason and in total; the series has one slot per bucket."""
    view = LiveView(reject_bucket_s=10, reject_buckets=6)
    for ts in (T0, T0 + 1, T0 + 12, T0 + 35):
        view.on_reject(NODE, "clock_skew", ts)
    view.on_reject(NODE, "invalid", T0 + 36)
    view.on_reject(NODE, "clock_skew", T0 + 11)  # late report into an older bucket
    st = view.get(NODE)
    assert st is not None
    now = T0 + 39
    assert view.rejects(st, now, 10, "clock_skew") == 1
    assert view.rejects(st, now, 10) == 2
    assert view.rejects(st, now, 60, "clock_skew") == 5
    assert view.rejects(st, now, 60, "too_old") == 0
    assert view.reject_series(st, now) == [0, 0, 2, 2, 0, 2]
    assert view.rejects(st, T0 + 1000, 60) == 0  # long quiet


def test_reasons_per_node_are_bounded() -> None:
    """Past ``max_reasons`` distinct reasons, new ones count under ``other``."""
    view = LiveView(max_reasons=2)
    for reason in ("a", "b", "c", "d"):
        view.on_reject(NODE, reason, T0)
    st = view.get(NODE)
    assert st is not None
    assert sorted(st.rejects) == ["a", "b", "other"]
    assert view.rejects(st, T0, 10, "other") == 2


def test_node_bound_refuses_newcomers_but_evicts_reject_only_nodes_first() -> None:
    """Forged node names (rejects only) cannot crowd out real nodes; real nodes are kept."""
    view = LiveView(max_nodes=3)
    view.on_sample(_sample(node="real-0"), T0)
    view.on_reject("forged-1", "invalid", T0 + 1)
    view.on_reject("forged-2", "invalid", T0 + 2)
    view.on_reject("forged-3", "invalid", T0 + 3)  # full: a reject cannot evict
    assert "forged-3" not in view
    assert view.refused == 1
    view.on_status("real-1", "online", T0 + 4)  # evicts the oldest reject-only node
    assert "real-1" in view
    assert "forged-1" not in view
    assert view.evicted == 1
    view.on_sample(_sample(node="real-2"), T0 + 5)
    view.on_sample(_sample(node="real-3"), T0 + 5)  # only real nodes left: refused
    assert sorted(st.node for st in view.nodes()) == ["real-0", "real-1", "real-2"]
    assert view.refused == 2
    view.forget("real-0")
    view.on_sample(_sample(node="real-3"), T0 + 6)
    assert "real-3" in view
    assert len(view) == 3


def test_room_for_a_newcomer_counts_the_reject_only_nodes_exactly() -> None:
    """``room_for`` (asked before each message is validated): yes for a held node or a free
    slot; when full, yes only while a reject-only node is held, however nodes became real,
    were evicted or forgotten; asking evicts nothing."""
    view = LiveView(max_nodes=3)
    view.on_reject("a", "invalid", T0)
    view.on_reject("b", "invalid", T0 + 1)
    view.on_sample(_sample(node="c"), T0 + 2)
    assert view.room_for("new")  # full; a and b may give way
    assert len(view) == 3
    view.on_status("a", "online", T0 + 3)  # a is real now
    assert view.room_for("new")  # b still may
    view.on_inventory(
        msgspec.convert({**inventory_dict(), "node": "new"}, Inventory), T0 + 4
    )  # evicts b
    assert ("b" not in view, view.evicted) == (True, 1)
    assert not view.room_for("other")  # three real nodes
    assert view.room_for("a")
    view.forget("c")
    view.on_reject("d", "invalid", T0 + 5)  # a free slot: d is reject-only
    view.forget("d")  # forgotten: no reject-only node is left
    assert view.room_for("e")  # the free slot
    view.on_sample(_sample(node="e"), T0 + 6)
    assert not view.room_for("f")


def test_a_repeated_sample_of_the_run_before_does_not_take_the_node_back() -> None:
    """Epoch 8 started with the clock set back 200 s behind epoch 7's samples; the broker
    then delivers epoch 7's seq 3 again (after a reconnect). It is stamped after epoch 8's
    samples but numbered at or below where epoch 7 had reached: a repeat, not a start. A
    spool wiped later (epoch 0, newer samples) is a start."""
    view = LiveView()
    for k in range(4):
        view.on_sample(_sample(T0 + 5 * k, seq=k, epoch=7), T0 + 5 * k)
    for k in range(2):
        assert view.on_sample(_sample(T0 - 200 + 5 * k, seq=k, epoch=8), T0 + 20 + k)
    assert not view.on_sample(_sample(T0 + 15, seq=3, epoch=7), T0 + 30)
    st = view.get(NODE)
    assert st is not None
    assert st.sample is not None
    assert (st.sample.epoch, st.sample.seq) == (8, 1)
    assert (st.seq_epoch, st.seq_last, st.gaps) == (8, 1, ())
    assert view.on_sample(_sample(T0 + 40, seq=0, epoch=0), T0 + 40)  # a wiped spool


def test_a_wiped_spool_numbering_its_first_epoch_again_is_a_start() -> None:
    """Epoch 0 ran to seq 3, epoch 1 took over; the spool is then wiped (a reinstall, a
    spool on tmpfs), so the agent counts epoch 0 from seq 0 again, stamped after both runs.
    Its epoch and seq match the run epoch 1 took over from, but its time is past that run's
    newest: a start, not a repeat of the old run (the node was stale until the new run's seq
    passed the old one's)."""
    view = LiveView()
    for k in range(4):
        view.on_sample(_sample(T0 + 5 * k, seq=k, epoch=0), T0 + 5 * k)
    for k in range(2):
        assert view.on_sample(_sample(T0 + 20 + 5 * k, seq=k, epoch=1), T0 + 20 + 5 * k)
    assert view.on_sample(_sample(T0 + 40, seq=0, epoch=0), T0 + 40)
    assert view.on_sample(_sample(T0 + 45, seq=1, epoch=0), T0 + 45)
    st = view.get(NODE)
    assert st is not None
    assert st.sample is not None
    assert (st.sample.epoch, st.sample.seq) == (0, 1)
    assert (st.seq_epoch, st.seq_last, st.gaps) == (0, 1, ())


def test_bad_bounds_are_refused() -> None:
    """A view that could hold nothing is a configuration mistake."""
    with pytest.raises(ValueError, match="max_nodes"):
        LiveView(max_nodes=0)
    with pytest.raises(ValueError, match="reject_bucket_s"):
        LiveView(reject_bucket_s=0)


_STEP_S = 60.0
"""Between two samples of these tests: 12 of the samples' 5 s intervals."""


@pytest.mark.parametrize(
    ("sent", "gaps"),
    [
        ([(1, 0), (1, 1), (1, 5), (1, 6)], [(1, 1, 3)]),  # seq 2-4 never came
        ([(1, 0), (1, 1), (2, 0), (2, 1)], []),  # a restart is not a gap
        ([(1, 0), (1, 1), (1, 1), (1, 0), (1, 2)], []),  # duplicates resent after a reconnect
        ([(2, 0), (1, 9, -1), (2, 1)], []),  # an older epoch's late sample changes nothing
        ([(None, 5), (None, 6), (None, 0), (None, 1)], []),  # an agent before epochs restarts
        ([(None, 5), (None, 8)], [(None, 5, 2)]),
        # a wiped spool: the agent counts epochs from 0 again, with newer samples
        ([(7, 0), (7, 1), (0, 0), (0, 4)], [(0, 0, 3)]),
        # more samples than the node's clock had room for (12 intervals): counts 12
        ([(1, 0), (1, 2**53 - 1)], [(1, 0, 12)]),
        ([(1, 0), (1, 14)], [(1, 0, 12)]),
        ([(1, 0), (1, 13)], [(1, 0, 12)]),
    ],
)
def test_a_jump_in_seq_within_one_epoch_is_a_gap_and_nothing_else_is(
    sent: list[tuple[int | None, int] | tuple[int | None, int, int]],
    gaps: list[tuple[int | None, int, int]],
) -> None:
    """Gaps are (epoch, last seq before, missing); counted per node and for the fleet.

    A sample is sent every ``_STEP_S`` (its time is ``k`` steps on, or the third number of
    the tuple); a gap counts at most the intervals its node's clock says passed, so a node
    that jumps its ``seq`` does not add 2**53 to the fleet's missing samples."""
    view = LiveView()
    for k, (epoch, seq, *at) in enumerate(sent):
        ts = T0 + _STEP_S * (at[0] if at else k)
        view.on_sample(_sample(ts, seq=seq, epoch=epoch), ts)
    st = view.get(NODE)
    assert st is not None
    assert [(g.epoch, g.after_seq, g.missing) for g in st.gaps] == gaps
    assert view.missing_total == st.missing_total == sum(g[2] for g in gaps)
    assert view.missing_since(st, T0) == st.missing_total
    assert view.missing_since(st, T0 + _STEP_S * len(sent)) == 0


def test_a_node_keeps_only_its_last_gaps() -> None:
    """max_gaps bounds the gaps a node keeps; the counters keep counting."""
    view = LiveView(max_gaps=2)
    for k in range(5):
        view.on_sample(_sample(T0 + _STEP_S * k, seq=2 * k, epoch=1), T0 + _STEP_S * k)
    st = view.get(NODE)
    assert st is not None
    assert [g.after_seq for g in st.gaps] == [4, 6]
    assert (view.gaps_total, view.missing_total) == (4, 4)


def _gaps(view: LiveView) -> list[tuple[int, int]]:
    st = view.get(NODE)
    assert st is not None
    return [(g.after_seq, g.missing) for g in st.gaps]


def test_in_a_share_group_only_the_leaders_feed_counts_gaps() -> None:
    """``from_feed``: the member's own share (every other sample of the node) counts
    nothing; the feed counts from its first sample, and the share's seq 7 ahead of the
    feed's 6 makes no gap; a seq the agent skipped is one on the feed."""
    view = LiveView(from_feed=True)

    def send(seq: int, *, feed: bool) -> None:
        ts = T0 + _STEP_S * seq
        view.on_sample(_sample(ts, seq=seq, epoch=1), ts + 0.1, feed=feed)

    for seq in (0, 2, 4):  # a standby's share
        send(seq, feed=False)
    assert _gaps(view) == []
    view.feed_started()
    send(5, feed=True)  # the leader's first feed sample: the count starts there
    send(7, feed=False)  # its own share's copy of 7 before the feed's 6
    for seq in (6, 7, 8):
        send(seq, feed=True)
    assert (_gaps(view), view.gaps_total, view.missing_total) == ([], 0, 0)
    send(11, feed=True)  # the agent never sent 9 and 10
    assert (_gaps(view), view.gaps_total, view.missing_total) == ([(8, 2)], 1, 2)


def test_a_feed_subscribed_again_starts_each_nodes_count_again() -> None:
    """What a lost feed connection (a clean session) did not carry went to the members'
    sessions: no gap across :meth:`LiveView.feed_started`; within one feed run, a gap."""
    view = LiveView(from_feed=True)
    view.feed_started()
    for seq in (0, 1, 2, 9, 10, 12):
        if seq == 9:
            view.feed_started()
        ts = T0 + _STEP_S * seq
        view.on_sample(_sample(ts, seq=seq, epoch=1), ts, feed=True)
    assert _gaps(view) == [(10, 1)]


def test_a_feed_subscribed_again_counts_from_its_first_sample_even_the_next_seq() -> None:
    """The first sample of a new feed run starts the count there though it is the next seq
    of the node's last (no gap either way): a jump right after it is a gap of that run."""
    view = LiveView(from_feed=True)
    view.feed_started()
    for seq in (0, 1, 2, 3, 5):
        if seq == 3:
            view.feed_started()
        ts = T0 + _STEP_S * seq
        view.on_sample(_sample(ts, seq=seq, epoch=1), ts, feed=True)
    assert _gaps(view) == [(3, 1)]


def test_a_new_epoch_numbered_on_from_the_last_run_counts_its_gaps() -> None:
    """A restart (a higher epoch) whose first seq happens to follow the last run's is the
    new run's start all the same: a jump right after it is a gap of that run."""
    view = LiveView()
    for epoch, seq in ((5, 0), (5, 1), (6, 2), (6, 5)):
        ts = T0 + _STEP_S * (seq + 1)
        view.on_sample(_sample(ts, seq=seq, epoch=epoch), ts)
    assert _gaps(view) == [(2, 2)]


def test_a_late_duplicate_from_an_agent_before_epochs_is_not_a_restart() -> None:
    """An agent without epochs: a redelivered older sample (its own, older ts) is not a
    restart, so the next sample is no gap (a restart's sample is newer than the last)."""
    view = LiveView()
    for seq in (5, 6, 7, 5, 8):  # seq 5 again: a redelivery, e.g. through a second filter
        view.on_sample(_sample(T0 + seq, seq=seq, epoch=None), T0 + 10)
    st = view.get(NODE)
    assert st is not None
    assert (st.gaps, view.missing_total) == ((), 0)
    view.on_sample(_sample(T0 + 20, seq=0, epoch=None), T0 + 20)  # a real restart
    view.on_sample(_sample(T0 + 25, seq=1, epoch=None), T0 + 25)
    st = view.get(NODE)
    assert st is not None
    assert st.gaps == ()


def test_the_inventories_the_view_holds_are_left_out_of_the_garbage_collectors_passes() -> None:
    """After a collection, none of a held inventory's arrays is tracked by the GC (each
    node's four lists would be scanned by every full pass for as long as the node lives)."""
    from agent.simulate import FleetSimulator  # noqa: PLC0415

    sim = FleetSimulator(2, gpus_per_node=4, seed=1)
    view = LiveView()
    for i in range(len(sim.node_ids)):
        view.on_sample(sim.sample(i, 1_800_000_000.0, 1), 1_800_000_000.0)
        view.on_inventory(sim.inventory(i, 1_800_000_000.0), 1_800_000_000.0)
    gc.collect()
    for node in sim.node_ids:
        st = view.get(node)
        inv = None if st is None else st.inventory
        assert inv is not None
        assert [len(inv.gpus), len(inv.cpus)] == [4, 1]
        assert not any(gc.is_tracked(a) for a in (inv.gpus, inv.nics, inv.cpus, inv.accelerators))


def test_a_late_sample_of_the_last_run_is_judged_by_that_runs_newest_time() -> None:
    """A run whose clock stepped back (seq 1 at +299 s, seq 2 at +5 s): a late sample of the
    run before, stamped between the two, is late, not a restart with a wiped spool, as the
    store's watermark judges it (against the run's newest time, not its latest sample's)."""
    view = LiveView()
    view.on_sample(_sample(T0 + 299, seq=1, epoch=5), received=T0)
    view.on_sample(_sample(T0 + 5, seq=2, epoch=5), received=T0 + 5)
    assert not view.on_sample(_sample(T0 + 100, seq=9, epoch=4), received=T0 + 6)
    assert view.on_sample(_sample(T0 + 400, seq=0, epoch=4), received=T0 + 7)  # wiped spool
    st = view.get(NODE)
    assert st is not None
    assert st.sample is not None
    assert (st.sample.epoch, st.sample.seq) == (4, 0)


def test_a_forgotten_node_is_remembered_until_it_sends_again_and_snapshots_keep_theirs() -> None:
    """``forget`` drops nodes and remembers them (``was_forgotten``) until a message of
    theirs; a snapshot keeps what was forgotten when it was taken; at most ``max_nodes``
    are remembered, the oldest dropped first."""
    view = LiveView(max_nodes=2)
    view.on_sample(_sample(node="a"), T0)
    before = view.snapshot()
    view.forget("a", "b")
    assert ("a" in view, view.was_forgotten("a"), view.was_forgotten("b")) == (False, True, True)
    assert not before.was_forgotten("a")
    taken = view.snapshot()
    view.on_status("a", "online", T0 + 1)
    assert ("a" in view, view.was_forgotten("a")) == (True, False)
    assert taken.was_forgotten("a")
    view.forget("c")
    view.forget("d")
    assert [n for n in "abcd" if view.was_forgotten(n)] == ["c", "d"]


def test_past_max_nodes_the_forgotten_kept_are_the_newest_by_forget_time() -> None:
    """A starting collector remembers the store's forgotten nodes latest first
    (:func:`collector.store.forget.still_forgotten`); a forget after that, past
    ``max_nodes``, drops the oldest by forget time, not the first remembered (which was the
    newest restored: "c" was dropped and "a", forgotten long before, kept)."""
    view = LiveView(max_nodes=3)
    view.forget_at({"c": T0 + 3, "b": T0 + 2, "a": T0 + 1})
    view.forget_at({"d": T0 + 4})
    assert [n for n in "abcd" if view.was_forgotten(n)] == ["b", "c", "d"]
    view.forget_at({"e": T0 + 5, "a": T0 + 6})
    assert [n for n in "abcde" if view.was_forgotten(n)] == ["a", "d", "e"]
    assert view.forgotten_at("a") == T0 + 6
