"""The ingest validator: one item per message, rejects counted, quarantined, timed by our clock."""

from __future__ import annotations

import functools
import operator

import msgspec
import pytest

from agent.simulate import FleetSimulator
from collector.counters import labelled_values, value
from collector.ingest.metrics import OTHER_REASON, REJECT_REASONS
from collector.ingest.validate import QUARANTINE_PER_KEY, Ingestor, Item, Rejected
from collector.live import LiveView
from collector.nodefacts import gpu_power_w
from collector.paths import StoreTarget
from collector.store.codec import PayloadCodec
from collector.store.db import NodeUpdate, SampleRow, Store
from collector.store.rollups import MINUTE, RollupConfig, gpu_series, pack_gpus
from collector.store.unpack import PayloadDecoder
from shared.clock import FakeClock
from shared.schema import Sample, decode_sample, encode
from shared.topics import inventory_topic, sample_topic, status_topic
from tests.shared.wire_samples import sample_dict


def test_ingestor_counts_each_reject_reason_and_rate_limits_logs() -> None:
    """Rejects are counted per reason; the summary row holds GPU aggregates."""
    clock = FakeClock(start_wall=1.8e9 + 1)
    ing = Ingestor(clock)
    sim = FleetSimulator(1, gpus_per_node=4, seed=9, interval_s=5)
    s = sim.sample(0, 1.8e9, 0)
    payload = encode(s)
    row = ing.handle(sample_topic(s.node), payload)
    assert isinstance(row, SampleRow)
    assert row.gpu_count == 4
    assert row.gpu_util_pct == pytest.approx(sum(g.util_pct or 0 for g in s.gpus) / 4)
    assert row.gpu_power_w == pytest.approx(sum(g.power_interval_w or 0 for g in s.gpus))
    assert row.ts_ms == round(s.ts * 1000)

    for _ in range(3):
        assert isinstance(ing.handle(sample_topic(s.node), b"]["), Rejected)
    assert isinstance(ing.handle(sample_topic("other"), payload), Rejected)
    bad = msgspec.json.decode(payload)
    bad["cpu"]["pct"] = 300
    assert isinstance(ing.handle(sample_topic(s.node), msgspec.json.encode(bad)), Rejected)
    status = b'{"v":1,"node":"%s","status":"online"}' % s.node.encode()
    assert ing.handle(status_topic(s.node), status) == NodeUpdate(
        s.node, status="online", status_ts=1.8e9 + 1
    )
    m = ing.metrics
    assert labelled_values(m.rejected) == {
        **dict.fromkeys((*REJECT_REASONS, OTHER_REASON), 0),
        "not_json": 3,
        "topic_mismatch": 1,
        "invalid": 1,
    }
    assert (value(m.rejected), value(m.samples), value(m.status)) == (5, 1, 1)
    assert m.counter_rows()["rejected_not_json"] == 3  # the counters table's name


@pytest.mark.parametrize(
    ("ahead_s", "verdict"),
    [(-3600.0, "stored"), (0.0, "stored"), (299.0, "stored"), (301.0, "clock_skew")],
)
def test_samples_ahead_of_the_collectors_clock_are_clock_skew(ahead_s: float, verdict: str) -> None:
    """Up to max_skew_s ahead is accepted; further ahead is rejected as clock_skew."""
    clock = FakeClock(start_wall=1.8e9)
    ing = Ingestor(clock, max_skew_s=300)
    sim = FleetSimulator(1, gpus_per_node=1, seed=2, interval_s=5)
    s = sim.sample(0, 1.8e9 + ahead_s, 0)
    item = ing.handle(sample_topic(s.node), encode(s))
    if verdict == "stored":
        assert isinstance(item, SampleRow)
        assert item.received_ms == round(1.8e9 * 1000)
    else:
        assert isinstance(item, Rejected)
        assert item.quarantine.reason == "clock_skew"
        assert item.quarantine.node == s.node
        assert ing.take_node_rejects() == {(s.node, "clock_skew"): (1, round(1.8e9 * 1000))}
        assert ing.take_node_rejects() == {}  # taken once


def test_samples_older_than_retention_are_too_old_late_ones_welcome() -> None:
    """A sample replayed after an outage is stored while it is inside the retention window."""
    ing = Ingestor(FakeClock(start_wall=1.8e9), max_age_s=3600)
    sim = FleetSimulator(1, gpus_per_node=1, seed=2, interval_s=5)
    late = sim.sample(0, 1.8e9 - 3500, 0)
    expired = sim.sample(0, 1.8e9 - 3700, 1)
    assert isinstance(ing.handle(sample_topic(late.node), encode(late)), SampleRow)
    rejected = ing.handle(sample_topic(expired.node), encode(expired))
    assert isinstance(rejected, Rejected)
    assert rejected.quarantine.reason == "too_old"


def test_quarantine_keeps_the_head_of_a_huge_payload_and_its_size() -> None:
    """A 2 MB message: too_large, 256 bytes kept, the size recorded, the topic cut."""
    ing = Ingestor(FakeClock())
    item = ing.handle(sample_topic("n1"), b"x" * 2_000_000)
    assert isinstance(item, Rejected)
    q = item.quarantine
    assert (q.reason, q.node, q.payload_bytes, len(q.payload_head)) == (
        "too_large",
        "n1",
        2_000_000,
        256,
    )
    long_topic = "capwatch/" + "y" * 5000
    rejected = ing.handle(long_topic, b"{}")
    assert isinstance(rejected, Rejected)
    assert len(rejected.quarantine.topic) == 256
    assert rejected.quarantine.node is None


def test_stored_payload_is_the_validated_sample_without_unknown_fields() -> None:
    """Unknown fields (tolerated for v1.x writers) are not stored: padding cannot fill the disk."""
    ing = Ingestor(FakeClock(start_wall=1.8e9))
    sim = FleetSimulator(1, gpus_per_node=1, seed=2, interval_s=5)
    s = sim.sample(0, 1.8e9 - 5, 0)
    padded = msgspec.json.encode({**msgspec.json.decode(encode(s)), "zz_pad": "x" * 500_000})
    row = ing.handle(sample_topic(s.node), padded)
    assert isinstance(row, SampleRow)
    assert b"zz_pad" not in row.payload
    stored = PayloadDecoder(b"", PayloadCodec(b"").layout).json(row.payload)  # packed
    assert decode_sample(stored) == s


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_one_reject_not_a_crash(depth: int) -> None:
    """JSON nested past the decoder's recursion limit is rejected, not raised."""
    ing = Ingestor(FakeClock(start_wall=1.8e9))
    sim = FleetSimulator(1, gpus_per_node=1, seed=2, interval_s=5)
    s = sim.sample(0, 1.8e9 - 5, 0)
    nested = b"[" * depth + b"]" * depth
    payload = encode(s)[:-1] + b',"junk":' + nested + b"}"
    item = ing.handle(sample_topic(s.node), payload)
    assert isinstance(item, Rejected)
    assert item.quarantine.reason == "not_json"
    for kind in ("inventory", "status"):  # a retained one would meet every new collector
        assert isinstance(ing.handle(f"capwatch/v1/nodes/{s.node}/{kind}", payload), Rejected)


def test_an_empty_retained_status_or_inventory_is_a_cleared_message_not_a_reject() -> None:
    """``mosquitto_pub -r -n`` on a node's status or inventory topic (MQTT's way to clear a
    retained message): counted as cleared, no reject, nothing about the node changed; an
    empty sample is still a bad message."""
    ing = Ingestor(FakeClock(start_wall=1.8e9))
    for topic in (status_topic("gpu-1"), inventory_topic("gpu-1")):
        assert ing.handle(topic, b"") == NodeUpdate("gpu-1")
    assert isinstance(ing.handle(sample_topic("gpu-1"), b""), Rejected)
    m = ing.metrics
    assert value(m.retained_cleared) == 2
    assert value(m.rejected) == 1
    assert m.counter_rows()["retained_cleared"] == 2
    assert list(ing.take_node_rejects()) == [("gpu-1", "not_json")]  # the sample alone


def test_a_new_node_past_max_nodes_is_fleet_full_and_reaches_neither_store_nor_view() -> None:
    """The fleet bound (the live view's ``max_nodes``): a message of a node the view does not
    hold, when it holds that many real nodes, is rejected as ``fleet_full`` before it is
    decoded (a broken one too), a cleared retained message as well; held nodes go on; a
    reject-only node gives its slot to a real one; a forgotten node frees one."""
    clock = FakeClock(start_wall=1.8e9 + 1)
    view = LiveView(max_nodes=3)
    ing = Ingestor(clock, live=view)
    sim = FleetSimulator(6, gpus_per_node=1, seed=4, interval_s=5)
    n = sim.node_ids

    def sample(i: int) -> Item:
        return ing.handle(sample_topic(n[i]), encode(sim.sample(i, 1.8e9, 0)))

    assert isinstance(sample(0), SampleRow)
    assert isinstance(ing.handle(sample_topic(n[1]), b"]["), Rejected)  # reject-only n1
    assert isinstance(sample(2), SampleRow)  # full, n1 the slot a valid newcomer may take
    broken = ing.handle(sample_topic(n[4]), b"][")
    assert isinstance(broken, Rejected)
    assert broken.quarantine.reason == "not_json"  # read: it might have been valid
    assert n[1] in view  # a rejected message evicts nothing
    assert n[4] not in view
    assert isinstance(sample(3), SampleRow)  # n1's slot: it only sent a reject
    assert n[1] not in view
    for topic, payload in [
        (sample_topic(n[4]), encode(sim.sample(4, 1.8e9, 0))),
        (sample_topic(n[4]), b"]["),  # refused before it is read
        (status_topic(n[4]), b""),
        (inventory_topic(n[5]), encode(sim.inventory(5, 1.8e9))),
    ]:
        refused = ing.handle(topic, payload)
        assert isinstance(refused, Rejected)
        assert refused.quarantine.reason == "fleet_full"
    assert isinstance(sample(0), SampleRow)  # held nodes go on
    assert sorted(st.node for st in view.nodes()) == sorted([n[0], n[2], n[3]])
    assert labelled_values(ing.metrics.rejected)["fleet_full"] == 4
    assert view.evicted == 1
    view.forget(n[2])
    assert isinstance(sample(4), SampleRow)
    assert n[4] in view


async def test_gpus_are_packed_for_the_rollups_only_when_they_are_on(
    store_url: StoreTarget,
) -> None:
    """With the rollups off a sample's row carries no packed GPUs (nothing would read
    them); on, it does, and a store that rolls up stages and folds them into the sample's
    per-GPU records."""
    clock = FakeClock(start_wall=1.8e9 + 1)
    s = FleetSimulator(1, gpus_per_node=4, seed=9, interval_s=5).sample(0, 1.8e9, 0)
    off = Ingestor(clock, rollups=False).handle(sample_topic(s.node), encode(s))
    on = Ingestor(clock).handle(sample_topic(s.node), encode(s))
    assert isinstance(off, SampleRow)
    assert isinstance(on, SampleRow)
    assert off.gpu_stats == b""
    assert on.gpu_stats == pack_gpus(s.gpus)
    async with Store(store_url, rollups=RollupConfig()) as store:
        await store.write_batch([on], new_nodes=[s.node])
        assert await store.fold_rollups() == 1
        points = await store.run(gpu_series(s.node, MINUTE, 1.8e9 - 60, 1.8e9 + 60))
    assert [(p["gpu"], p["util_pct"]) for p in points] == [
        (g.index, pytest.approx(g.util_pct)) for g in s.gpus
    ]


def _gpus_shaped(shape: str) -> Sample:
    """The wire samples' fully populated sample, its GPUs' readings as ``shape`` says."""
    d = sample_dict()
    gpus = d["gpus"]
    if shape == "none":
        d["gpus"] = []
    for k, g in enumerate(gpus):
        if shape == "unreported" or (shape == "mixed" and k % 2):
            for field in ("util_pct", "temp_c", "mem_used_bytes", "power_w", "power_interval_w"):
                g[field] = None
            g["ecc"] = g["remapped_rows"] = None
            g["clock_event_reasons"] = None
        if shape == "mixed":
            g["util_pct"] = None if k % 3 == 0 else 10.0 * k + 0.1
            g["temp_c"] = None if k % 3 == 1 else 60.0 + k
            g["power_interval_w"] = None  # the instantaneous reading where it has one
            g["clock_event_reasons"] = 1 << k
    return decode_sample(msgspec.json.encode(d))


def _near(value: float | None) -> object:
    return None if value is None else pytest.approx(value)


@pytest.mark.parametrize("shape", ["full", "mixed", "unreported", "none"])
def test_the_row_the_live_view_and_the_rollups_get_what_each_sums_of_the_gpus(
    shape: str,
) -> None:
    """The validator takes a sample's GPUs in one pass for its row, the live view's
    summaries and the rollups' packed readings: each the same as summed on its own, with
    GPUs reporting some readings, none, or no GPUs at all."""
    s = _gpus_shaped(shape)
    view = LiveView()
    item = Ingestor(FakeClock(start_wall=s.ts + 1), live=view).handle(
        sample_topic(s.node), encode(s)
    )
    assert isinstance(item, SampleRow)
    utils = [g.util_pct for g in s.gpus if g.util_pct is not None]
    watts = [w for g in s.gpus if (w := gpu_power_w(g)) is not None]
    mems = [g.mem_used_bytes for g in s.gpus if g.mem_used_bytes is not None]
    temps = [g.temp_c for g in s.gpus if g.temp_c is not None]
    reasons = [g.clock_event_reasons or 0 for g in s.gpus]
    assert item.gpu_count == len(s.gpus)
    assert item.gpu_util_pct == _near(sum(utils) / len(utils) if utils else None)
    assert item.gpu_power_w == _near(sum(watts) if watts else None)
    assert item.gpu_mem_used_bytes == (sum(mems) if mems else None)
    assert item.gpu_stats == pack_gpus(s.gpus)
    st = view.get(s.node)
    assert st is not None
    assert st.max_temp_c == max(temps, default=None)
    assert st.min_util_pct == min(utils, default=None)
    assert st.gpu_util_n == len(utils)
    assert st.gpu_util_sum == pytest.approx(sum(utils))
    assert st.gpu_power_w == item.gpu_power_w
    assert st.clock_reasons_any == functools.reduce(operator.or_, reasons, 0)
    assert st.ecc == {g.index: g.ecc for g in s.gpus if g.ecc is not None}
    assert st.remapped_rows == {
        g.index: g.remapped_rows for g in s.gpus if g.remapped_rows is not None
    }
    fed = LiveView()  # the view's own pass (the share group's feed, a takeover's merge)
    fed.on_sample(s, s.ts + 1)
    assert fed.get(s.node) == st


def test_parsed_sample_topics_are_kept_no_more_than_the_fleets_bound() -> None:
    """The validator keeps each node's sample topic parsed (a lookup a sample), never more
    of them than the live view holds nodes; a topic of an invented name, or that names no
    node, gets the same verdict whether kept or not."""
    view = LiveView(max_nodes=4)
    ing = Ingestor(FakeClock(start_wall=1.8e9 + 1), live=view)
    sim = FleetSimulator(6, gpus_per_node=1, seed=9, interval_s=5)
    for _ in range(2):
        for i, node in enumerate(sim.node_ids):
            item = ing.handle(sample_topic(node), encode(sim.sample(i, 1.8e9, 0)))
            assert isinstance(item, SampleRow if i < 4 else Rejected)
            assert len(ing._sample_topics) <= 4
        bad = ing.handle("capwatch/v1/nodes/bad node!/sample", b"{}")
        assert isinstance(bad, Rejected)
        assert bad.quarantine.reason == "bad_topic"


def test_a_few_rejects_per_node_and_reason_are_kept_between_two_flushes() -> None:
    """The first QUARANTINE_PER_KEY rejects of a node for a reason (and of messages naming
    no node, per reason) are kept for the quarantine; the rest only counted; each flush of
    the counters (take_node_rejects) opens a new window."""
    ing = Ingestor(FakeClock(start_wall=1.8e9))

    def kept(topic: str, n: int, payload: bytes = b"][") -> list[bool]:
        out = []
        for _ in range(n):
            item = ing.handle(topic, payload)
            assert isinstance(item, Rejected)
            out.append(item.kept)
        return out

    extra = 5
    assert (
        kept(sample_topic("n1"), QUARANTINE_PER_KEY + extra)
        == [True] * QUARANTINE_PER_KEY + [False] * extra
    )
    assert kept(sample_topic("n2"), 1) == [True]  # another node: its own share
    assert kept(sample_topic("n1"), 1, b"{}") == [True]  # another reason: invalid
    nowhere = "capwatch/v1/nodes/bad node!/sample"
    assert kept(nowhere, QUARANTINE_PER_KEY + 1)[-2:] == [True, False]
    counted = ing.take_node_rejects()
    assert counted[("n1", "not_json")][0] == QUARANTINE_PER_KEY + extra  # all counted
    assert kept(sample_topic("n1"), 1) == [True]
    assert kept(nowhere, 1) == [True]


def test_a_share_groups_rejected_samples_count_in_the_view_from_the_feed_alone() -> None:
    """With ``from_feed`` (a share group) a member's own share of a node's rejected samples
    is not counted in the view (the leader would see 1/N of them), the feed's are (every
    share); a rejected status counts from the member's own, which every member receives.
    Alone, every rejected sample counts."""
    clock = FakeClock(start_wall=1.8e9)
    now = clock.time()
    sim = FleetSimulator(1, gpus_per_node=2, seed=3, interval_s=5)
    node = sim.node_ids[0]
    good = encode(sim.sample(0, now - 1, 0))

    def rejects(view: LiveView) -> int:
        st = view.get(node)
        return 0 if st is None else view.rejects(st, now, 60)

    grouped = LiveView(from_feed=True)
    ing = Ingestor(clock, live=grouped)
    assert ing.observe(sample_topic(node), good)  # the node is known
    assert isinstance(ing.handle(sample_topic(node), b"]["), Rejected)
    assert rejects(grouped) == 0  # the member's own share: the feed counts it
    assert not ing.observe(sample_topic(node), b"][")
    assert not ing.observe(sample_topic(node), encode(sim.sample(0, now + 3600, 1)))
    assert rejects(grouped) == 2  # not_json and clock_skew, from the feed
    assert isinstance(ing.handle(status_topic(node), b"{}"), Rejected)
    assert rejects(grouped) == 3  # a status: every member receives it

    alone = LiveView()
    ing = Ingestor(clock, live=alone)
    assert isinstance(ing.handle(sample_topic(node), good), SampleRow)
    assert isinstance(ing.handle(sample_topic(node), b"]["), Rejected)
    assert rejects(alone) == 1


def _forgotten_at(
    at: float, *, gpus: int, seed: int
) -> tuple[LiveView, Ingestor, FleetSimulator, str]:
    """An ingestor whose view forgot a simulated node at ``at``, its clock 600 s later and
    ``max_skew_s`` 300: the view, ingestor, simulator and node."""
    clock = FakeClock(start_wall=at + 600)
    view = LiveView()
    ing = Ingestor(clock, max_skew_s=300, live=view)
    sim = FleetSimulator(1, gpus_per_node=gpus, seed=seed, interval_s=5)
    node = sim.node_ids[0]
    view.forget(node, at=at)
    return view, ing, sim, node


def test_a_forgotten_nodes_messages_from_before_its_forget_are_dropped() -> None:
    """A node forgotten at ``at``: its samples, inventory and ``online`` status stamped up to
    max_skew_s after (its clock may be that far ahead), and its ``offline`` status (no time),
    are ``forgotten``: counted by reason only, not kept, not the node's rejects, and it
    stays forgotten; so does a message rejected for another reason. The first stamped
    later brings it back."""
    at = 1.8e9
    view, ing, sim, node = _forgotten_at(at, gpus=1, seed=2)
    status = b'{"v":1,"node":"%s","status":"%s"%s}'
    before = [
        (sample_topic(node), encode(sim.sample(0, at - 5, 0))),
        (sample_topic(node), encode(sim.sample(0, at + 300, 1))),
        (inventory_topic(node), encode(sim.inventory(0, at + 100))),
        (status_topic(node), status % (node.encode(), b"online", b',"ts":%d' % at)),
        (status_topic(node), status % (node.encode(), b"offline", b"")),
        (sample_topic(node), b"]["),  # not_json: no time to judge, and not the node's
    ]
    for topic, payload in before:
        item = ing.handle(topic, payload)
        assert isinstance(item, Rejected), topic
        assert not item.kept
    assert labelled_values(ing.metrics.rejected)["forgotten"] == 5
    assert labelled_values(ing.metrics.rejected)["not_json"] == 1
    assert ing.take_node_rejects() == {}
    assert node not in view
    assert view.forgotten_at(node) == at

    back = ing.handle(sample_topic(node), encode(sim.sample(0, at + 301, 2)))
    assert isinstance(back, SampleRow)
    assert node in view
    assert not view.was_forgotten(node)
    assert isinstance(ing.handle(sample_topic(node), encode(sim.sample(0, at - 5, 0))), SampleRow)


@pytest.mark.parametrize("newer_inventory", [False, True])
def test_a_forgotten_nodes_inventory_from_before_comes_back_with_its_status(
    newer_inventory: bool,
) -> None:
    """An agent that ran through its node's forget sends the inventory it stamped at its
    start (before the forget), refused as ``forgotten``; a broker delivers a retained
    inventory before the retained status too. The status that brings the node back brings
    that inventory with it, into the store's update and the live view, not a node without
    one until its agent restarts. An inventory sent in between is newer: it wins."""
    at = 1.8e9
    view, ing, sim, node = _forgotten_at(at, gpus=2, seed=4)
    old = sim.inventory(0, at - 3600)
    item = ing.handle(inventory_topic(node), encode(old))
    assert isinstance(item, Rejected)
    assert item.quarantine.reason == "forgotten"
    if newer_inventory:
        newer = sim.inventory(0, at + 400)
        assert isinstance(ing.handle(inventory_topic(node), encode(newer)), NodeUpdate)
    status = b'{"v":1,"node":"%s","status":"online","ts":%d}' % (node.encode(), at + 500)
    update = ing.handle(status_topic(node), status)
    assert isinstance(update, NodeUpdate)
    assert update.status == "online"
    st = view.get(node)
    assert st is not None
    assert st.inventory is not None
    if newer_inventory:
        assert update.inventory is None  # stored with its own message
    else:
        assert update.inventory == encode(old)
        assert update.inventory_ts == ing.clock.time()
        assert st.inventory.ts == old.ts
    again = ing.handle(status_topic(node), status)
    assert isinstance(again, NodeUpdate)
    assert again.inventory is None
