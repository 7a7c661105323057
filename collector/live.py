"""The collector's in-memory view of the fleet: what alert rules and capacity read.

The ingest validator calls ``on_*`` as each message is validated, just before the writer
stores it (:mod:`collector.ingest.validate` says exactly what the rules may see, and why not
after the commit).
Per node it keeps the latest sample (and when it arrived, on the collector's clock), the
status and inventory, the last known ECC and row-remapping state per GPU (agents send those
only on slow ticks), recent XID events, and reject counts per reason in fixed time buckets.

Bounded: at most ``max_nodes`` nodes. A node seen only through rejects (a forged or broken
topic can name any node) is evicted first, oldest reject first, when a node that sent a
valid message needs the room; when every slot holds a real node, the newcomer is refused and
counted in :attr:`LiveView.refused`. Per node: at most ``max_reasons`` reject reasons x
``reject_buckets`` buckets, and per GPU the newest event of each of its last
``max_xids_per_gpu`` XID codes (a GPU repeating one code holds one entry; a GPU naming many
codes cannot push another GPU's XIDs out): at most ``shared.schema.MAX_GPUS`` x
``max_xids_per_gpu`` per node (default 8: as many codes as ``GpuXid`` fires on by default,
:data:`collector.alerts.settings.CRITICAL_XIDS`). A code pushed out by its GPU's newer ones
is counted in :attr:`LiveView.xids_dropped` (``capwatch_fleet_live_xids_dropped_total``).

Gaps in ``seq`` (:class:`SeqGap`: what ``NodeSamplesMissing`` and
``capwatch_fleet_samples_missing_total`` count) are counted from one ordered stream of each
node's samples. Alone, a collector takes every sample of every node, and all count. In a
share group (``from_feed``) a member's own share is only part of a node's samples (the
broker hands them to the members in turn: a standby saw every other one, and counted the
rest missing), and the leader's share and its live feed are two streams that interleave
(seq N+2 from one before N+1 from the other). There only the leader's feed counts
(``on_sample(..., feed=True)``: every node's samples, in order, on one connection;
:func:`collector.parts.live_feed`), each node from its first sample after the feed
(re)subscribed (:meth:`LiveView.feed_started`). So a standby counts no gaps; a new leader
counts none across its takeover, whose samples it did not see wait in the members' sessions
(a dead member's until it returns), nor across a reconnection of its feed; and a seq an agent
skipped is a gap on the leader as on a lone collector. The feed is QoS 0: a sample the broker
does not deliver to it while it stays connected (a broker may drop QoS 0 messages for a client
that falls far behind) counts as missing, though another member stores it. Rejected samples
(``NodeRejectsRising``) are counted the same way, from the feed alone
(:meth:`collector.ingest.validate.Ingestor.observe`): each member rejects only its share of
them, so the leader saw 1/N of a node's bad samples; rejects of status and inventory
messages, which every member receives, count from each member's own.

**Two agents as one node** (a cloned VM, a copied agent config): both publish under the
node's name, so its newest sample flips between them and the store holds both interleaved.
One agent numbers its samples in order within a run (an ``epoch``) and never goes back to a
run it left, so the view counts a sample as a second agent's (:attr:`NodeState.conflicts`,
``NodeAgentConflict``) when, in the same epoch as the held sample, its ``seq`` is at or below
the held one while it is stamped after every sample of that epoch (clones sharing an epoch: a
cloned spool, or two fresh ones of agents that counted a fresh spool from 0; two fresh spools
now start at two wall-clock epochs, :func:`agent.spoolfile.next_epoch`, and alternate as
below), and the held one arrived less than :data:`_AHEAD_FRESH` intervals before it (the run
ahead still sends: an agent of the old rule whose spool was wiped in epoch 0 starts at epoch
0, seq 0 again, and its old run sends no more); or
when it belongs to the run the held one took over from (:attr:`NodeState.prior_run`),
numbered past where that run was, and is the newest again or stamped after the held run
took over (two epochs alternating). One agent does none
of that: a restart is one switch to a new run; a late replay of the run before, or the
broker's redelivery, is numbered at or below what was seen or stamped before the new run
began; a duplicate has its original time. A clock stepped back between two runs can make one
agent's late samples look so: the rule asks for several within its window. Agents before
epochs are not judged (their ``seq`` restarts at 0 with each process). In a share group only
the leader's feed counts, as for gaps (a sample seen twice counts once).

Pure data: no I/O, no locks. One task (the reader, validating) updates it; the evaluator
reads a :meth:`LiveView.snapshot`, in a worker thread, while ingestion goes on. That is safe
without locks because a :class:`NodeState` in the view is never changed: an update stores a changed
copy of it in the view's dict (copy on write, its containers too), and a snapshot is a copy
of that dict, a few hundred microseconds at 12,500 nodes.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

import msgspec

from collector.nodefacts import (
    GpuFacts,
    PowerReading,
    agent_restarted,
    gap_missing,
    gpu_facts,
    sample_power,
)
from shared.schema import GpuEcc, GpuRemappedRows, Inventory, Sample

__all__ = ["DEFAULT_MAX_NODES", "LiveView", "NodeState", "SeqGap", "XidSeen"]

DEFAULT_MAX_NODES: Final = 50_000
"""Four times the 12,500-node fleet the benchmarks use."""

Status = Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class XidSeen:
    """One XID event as the view keeps it: the event and when its sample arrived."""

    gpu_index: int
    xid: int
    ts: float
    """The driver's time of the event (node clock)."""
    received: float
    """When the sample carrying it was stored (collector clock)."""


@dataclass(frozen=True, slots=True)
class SeqGap:
    """Samples a node numbered but the collector never got: a jump in ``seq`` within one
    agent ``epoch`` (a new epoch starting again at 0 is a restart, not a gap)."""

    epoch: int | None
    after_seq: int
    """The last sequence number received before the gap."""
    missing: int
    ts_before: float
    ts_after: float
    """Node clock: the samples either side of the gap."""
    received: float
    """When the sample after the gap arrived (collector clock)."""


_T = TypeVar("_T")

_NO_EPOCH: Final = -1
"""The epoch of an agent before the field: its seq restarts at 0 with each process."""
_AHEAD_FRESH: Final = 1.5
"""A sample going back in seq within its epoch is a second agent's only while the held one
(ahead) arrived less than this many of its intervals before: clones both send every interval."""


class NodeState(msgspec.Struct, gc=False):
    """Everything the view knows about one node. Read it, never change it: the view stores
    changed copies (see the module docstring).

    ``gc=False``: not tracked by the cyclic garbage collector (it refers to no object that
    refers back to it). Each sample stores a new one, and a snapshot keeps the old ones alive
    while an evaluation reads it: tracked, 12,500 nodes at a sample a second put ~12,500
    objects into each young-generation pass and made the middle-generation passes scan
    ~60,000-80,000 objects (tens of milliseconds with the event loop stopped)."""

    node: str
    sample: Sample | None = None
    sample_received: float | None = None
    status: Status | None = None
    status_ts: float | None = None
    inventory: Inventory | None = None
    inventory_ts: float | None = None
    ecc: dict[int, GpuEcc] = msgspec.field(default_factory=dict)
    """Last known ECC counters per GPU index (sent on slow ticks only)."""
    remapped_rows: dict[int, GpuRemappedRows] = msgspec.field(default_factory=dict)
    """Last known row-remapping state per GPU index (sent on slow ticks only)."""
    xids: deque[XidSeen] = msgspec.field(default_factory=deque)
    rejects: dict[str, deque[list[int]]] = msgspec.field(default_factory=dict)
    """Per reason: ``[bucket number, count]`` pairs, oldest first."""
    last_reject: float | None = None
    # Summaries over the GPUs, refreshed on each update so a rule can skip a healthy node
    # without looking at its GPUs: the hot loop is then per node, not per GPU.
    max_temp_c: float | None = None
    clock_reasons_any: int = 0
    """Bitwise OR of the latest sample's ``clock_event_reasons`` over all GPUs."""
    ecc_uncorrected_any: bool = False
    remap_bad_any: bool = False
    """Some GPU has a remap pending or a remapping failure."""
    # Fleet sums for /metrics, refreshed with the above, so a scrape adds per node, not per GPU.
    gpu_power_w: float | None = None
    """Sum of the latest sample's GPU power (:func:`collector.nodefacts.gpu_power_w`); None:
    none known."""
    gpu_util_sum: float = 0.0
    gpu_util_n: int = 0
    """GPUs of the latest sample that report utilisation, and the sum of their percentages."""
    # Sequence tracking: the highest seq of the newest epoch, and the last gaps (rare, so a
    # tuple replaced on each one: nothing allocated per healthy node).
    seq_epoch: int = _NO_EPOCH
    seq_last: int | None = None
    seq_ts: float = 0.0
    gaps: tuple[SeqGap, ...] = ()
    """The last ``max_gaps`` gaps, oldest first."""
    missing_total: int = 0
    """Samples missing in all gaps seen since the collector started."""
    node_power: PowerReading | None = None
    """The newest reading of the node's input power: from its sample (the agent read its
    BMC or PSUs) or polled out of band by the collector (:meth:`LiveView.on_node_power`)."""
    min_util_pct: float | None = None
    """The least busy GPU's utilisation in the latest sample (``JobGpuIdle`` skips a node
    whose every GPU is busy without looking at its jobs)."""
    sample_epoch_ts: float = 0.0
    """The newest time (node clock) of any sample of the latest sample's epoch: a sample of
    another epoch is a later run only when stamped after it (:func:`_later_sample`)."""
    prior_run: tuple[int, int, float] | None = None
    """The run the latest sample's took over from: its epoch, the seq it had reached and its
    newest time (:func:`collector.nodefacts.agent_restarted`'s ``prior``)."""
    seq_feed: int = 0
    """The feed run (:meth:`LiveView.feed_started`) ``seq_last`` came from, in a view that
    counts gaps from the feed only (``from_feed``)."""
    run_start_ts: float = 0.0
    """The time (node clock) of the sample that made the latest sample's run the newest: a
    sample of ``prior_run`` stamped after it, numbered past where that run was, is a second
    agent's (:meth:`LiveView.conflicts_since`)."""
    conflicts: tuple[float, ...] = ()
    """When (collector clock) the node's last ``max_conflicts`` samples that showed a second
    agent publishing as the node arrived, oldest first (rare, so a tuple replaced on each)."""

    @property
    def reject_only(self) -> bool:
        """Known only from rejects: no valid sample, status or inventory yet."""
        return self.sample is None and self.status is None and self.inventory is None

    def _copy(self) -> NodeState:
        """A copy to change and store instead of this one (containers shared until changed):
        msgspec's shallow ``__copy__``, every field (~0.2 us; passing the 31 fields to the
        constructor was ~1.1 us, once per sample)."""
        copied: NodeState = self.__copy__()  # type: ignore[attr-defined]  # not in msgspec's stubs
        return copied


_copy_state: Final[Callable[[NodeState], NodeState]] = NodeState.__copy__  # type: ignore[attr-defined]
""":meth:`NodeState._copy` without its Python frame, for :meth:`LiveView.on_sample` (once a
sample)."""


class LiveView:
    """Latest sample, status, inventory and recent rejects per node, bounded in memory."""

    def __init__(
        self,
        *,
        max_nodes: int = DEFAULT_MAX_NODES,
        reject_bucket_s: float = 10.0,
        reject_buckets: int = 60,
        max_reasons: int = 16,
        max_xids_per_gpu: int = 8,
        max_gaps: int = 16,
        max_conflicts: int = 8,
        from_feed: bool = False,
    ) -> None:
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be at least 1, got {max_nodes}")
        if reject_bucket_s <= 0 or reject_buckets < 1:
            raise ValueError("reject_bucket_s must be > 0 and reject_buckets >= 1")
        self.max_nodes = max_nodes
        self.reject_bucket_s = reject_bucket_s
        self.reject_buckets = reject_buckets
        self.max_reasons = max_reasons
        if max_xids_per_gpu < 1:
            raise ValueError(f"max_xids_per_gpu must be at least 1, got {max_xids_per_gpu}")
        self.max_xids_per_gpu = max_xids_per_gpu
        self.max_gaps = max_gaps
        if max_conflicts < 1:
            raise ValueError(f"max_conflicts must be at least 1, got {max_conflicts}")
        self.max_conflicts = max_conflicts
        """How many of its last samples that showed a second agent a node keeps the time of."""
        self.from_feed = from_feed
        """Count gaps in ``seq`` and rejected samples from the leader's live feed only (a
        share group: see the module docstring), not from every sample the view is given."""
        self._feed_run = 0
        """Bumped at each (re)subscription of the feed (:meth:`feed_started`)."""
        self.gaps_total = 0
        """Gaps in sequence numbers seen, all nodes (since this process started)."""
        self.missing_total = 0
        """Samples missing in those gaps, all nodes."""
        self.conflicts_total = 0
        """Samples that showed a second agent publishing as their node, all nodes."""
        self.refused = 0
        """Updates dropped because the view was full of real nodes."""
        self.evicted = 0
        """Reject-only nodes dropped to make room for real ones."""
        self.xids_dropped = 0
        """XID events dropped: their GPU held ``max_xids_per_gpu`` newer codes."""
        self._nodes: dict[str, NodeState] = {}
        self._reject_only = 0
        """How many held nodes are reject-only (a node is, from its first message, a reject,
        until its first valid one). A full view of real nodes refuses a newcomer without
        searching for one: the search is O(nodes), ~3 ms at 50,000, and a flood of
        invented names asked for it at every message."""
        self._racks: dict[str, PowerReading] = {}
        self._forgotten: dict[str, float | None] = {}
        """Nodes :meth:`forget` dropped that sent nothing since (at most ``max_nodes``, the
        newest by forget time), with when they were forgotten: the alert rules resolve their
        alerts at once. Replaced, never changed in place, so a snapshot shares it."""

    def snapshot(self) -> LiveView:
        """The view as it is now, unchanged by later updates (they store new node states)."""
        view = copy.copy(self)  # every setting and counter, whatever is added later
        view._nodes = dict(self._nodes)
        view._racks = dict(self._racks)
        return view

    @property
    def rack_power(self) -> Mapping[str, PowerReading]:
        """Each rack's newest draw read from its PDUs (:meth:`on_rack_power`), by rack name."""
        return self._racks

    def on_rack_power(self, rack: str, reading: PowerReading) -> None:
        """Hold ``reading`` (the sum of a rack's PDUs) as ``rack``'s draw unless a newer one
        is held. Racks come from the collector's PDU settings: bounded by them."""
        held = self._racks.get(rack)
        if held is None or held.received <= reading.received:
            self._racks[rack] = reading

    # -- updates (the validator): each stores a changed copy of the node state

    def on_sample(
        self, sample: Sample, received: float, *, feed: bool = False, facts: GpuFacts | None = None
    ) -> bool:
        """Hold ``sample`` as its node's latest unless an equal or newer one is held
        (:func:`_later_sample`). ``facts``: its GPUs' :func:`~collector.nodefacts.gpu_facts`,
        where the caller has them already (the validator's, issue 14).

        ``feed``: the sample came through the leader's live feed. With ``from_feed``,
        only those count in the node's gaps (:meth:`_track_seq`); else every sample does.
        XID events are kept even from a late (replayed) sample: they happened. Returns whether
        the sample became the latest.
        """
        nodes = self._nodes
        node = sample.node
        held = nodes.get(node)
        if held is None or held.sample is None:  # a node's first sample: maybe no room
            held = self._get(node, real=True)
            if held is None:
                return False
        st = nodes[node] = _copy_state(held)
        counted = feed or not self.from_feed
        if counted:
            # The next seq of the held epoch (nearly every sample) inline: _track_seq then
            # finds no restart, no gap (its first branch false, as agent_restarted is for one
            # epoch) and keeps the seq; a call was ~2,000 instructions a sample.
            seq = sample.seq
            last = st.seq_last
            if (
                last is not None
                and seq == last + 1
                and st.seq_feed == self._feed_run
                and (_NO_EPOCH if sample.epoch is None else sample.epoch) == st.seq_epoch
            ):
                st.seq_last, st.seq_ts = seq, sample.ts
            else:
                self._track_seq(st, sample, received)
        if sample.xids:
            self._keep_xids(st, sample, received)
        latest = st.sample
        same_run = False
        if latest is not None:
            same_run = sample.epoch == latest.epoch
            if same_run:
                # Two agents in one epoch (see the module docstring): a seq at or below the
                # held one stamped after every sample of the run. Compares only, and the
                # first is false for each in-order sample.
                if (
                    sample.seq <= latest.seq
                    and sample.ts > st.sample_epoch_ts
                    and sample.epoch is not None
                    and counted
                    and received - (st.sample_received or 0.0) < _AHEAD_FRESH * sample.interval_s
                ):
                    self._two_agents(st, received)
                if sample.ts > st.sample_epoch_ts:  # noqa: PLR1730 (max() is a call)
                    st.sample_epoch_ts = sample.ts
                # _later_sample for one run, inline: by seq within an epoch, else by time.
                later = sample.ts > latest.ts if sample.epoch is None else sample.seq > latest.seq
            else:
                later = _later_sample(sample, latest, st.sample_epoch_ts, st.prior_run)
            prior = st.prior_run
            if (
                not same_run
                and prior is not None
                and sample.epoch == prior[0]
                and sample.seq > prior[1]
                and (later or sample.ts > st.run_start_ts >= prior[2])
                and counted
            ):
                # Two agents in two runs: the run the held one took over from goes on,
                # numbered past where it was, and is newest again or stamped after the
                # held run took over (see the module docstring).
                self._two_agents(st, received)
            if not later:
                return False
        if not same_run:
            if latest is not None and latest.epoch is not None:
                st.prior_run = (latest.epoch, latest.seq, st.sample_epoch_ts)
            st.sample_epoch_ts = st.run_start_ts = sample.ts
        st.sample = sample
        st.sample_received = received
        if sample.node_power_w is not None:
            st.node_power = sample_power(sample, received)
        if facts is None:
            facts = gpu_facts(sample.gpus)
        st.max_temp_c = facts.max_temp_c
        st.clock_reasons_any = facts.clock_reasons
        st.gpu_power_w, st.gpu_util_sum, st.gpu_util_n = facts.power_w, facts.util_sum, facts.util_n
        st.min_util_pct = facts.min_util_pct
        if facts.health:  # ECC counters or row remapping (slow ticks): kept per GPU
            self._keep_health(st, sample)
        return True

    @staticmethod
    def _keep_health(st: NodeState, sample: Sample) -> None:
        """Keep each GPU's ECC counters and row remapping that ``sample`` carries."""
        ecc: dict[int, GpuEcc] | None = None
        remapped: dict[int, GpuRemappedRows] | None = None
        for gpu in sample.gpus:
            if gpu.ecc is not None:
                if ecc is None:
                    ecc = st.ecc = dict(st.ecc)
                ecc[gpu.index] = gpu.ecc
            if gpu.remapped_rows is not None:
                if remapped is None:
                    remapped = st.remapped_rows = dict(st.remapped_rows)
                remapped[gpu.index] = gpu.remapped_rows
        if ecc is not None:
            st.ecc_uncorrected_any = any((e.uncorrected_volatile or 0) > 0 for e in ecc.values())
        if remapped is not None:
            st.remap_bad_any = any(r.pending or r.failure for r in remapped.values())

    def feed_started(self) -> None:
        """The leader's live feed (re)subscribed: each node's next sample from it starts its
        count of ``seq`` again. What the feed did not carry while it was away (another term,
        a lost connection; the feed is a clean session) went to the members' own sessions and
        is no gap."""
        self._feed_run += 1

    def on_node_power(self, node: str, reading: PowerReading) -> None:
        """Hold ``reading`` (polled out of band) as ``node``'s input power unless a newer one
        is held. Only for a node the view knows: a poll cannot add a node to the fleet."""
        held = self._nodes.get(node)
        if held is None or held.reject_only:
            return
        if held.node_power is not None and held.node_power.received > reading.received:
            return
        st = self._nodes[node] = held._copy()
        st.node_power = reading

    def on_status(self, node: str, status: Status, ts: float) -> None:
        """Record ``node``'s status (``online``/``offline``, incl. the broker's last will)."""
        held = self._get(node, real=True)
        if held is not None:
            st = self._nodes[node] = held._copy()
            st.status = status
            st.status_ts = ts

    def on_inventory(self, inventory: Inventory, ts: float) -> None:
        """Record ``inventory`` as its node's current one."""
        held = self._get(inventory.node, real=True)
        if held is not None:
            st = self._nodes[inventory.node] = held._copy()
            st.inventory = _untracked(inventory)
            st.inventory_ts = ts

    def on_reject(self, node: str, reason: str, ts: float) -> None:
        """Count one rejected message from ``node`` for ``reason`` at collector time ``ts``."""
        held = self._get(node, real=False)
        if held is None:
            return
        st = self._nodes[node] = held._copy()
        st.rejects = dict(st.rejects)
        if reason not in st.rejects and len(st.rejects) >= self.max_reasons:
            reason = "other"
        old = st.rejects.get(reason)
        # Copies, pairs included: a snapshot may be reading the old ones.
        buckets = st.rejects[reason] = deque(
            ([b, n] for b, n in old or ()), maxlen=self.reject_buckets
        )
        b = int(ts // self.reject_bucket_s)
        if buckets and buckets[-1][0] == b:
            buckets[-1][1] += 1
        elif not buckets or buckets[-1][0] < b:
            buckets.append([b, 1])
        else:  # out of order: find its bucket, or drop it if it is older than the ring
            for pair in reversed(buckets):
                if pair[0] == b:
                    pair[1] += 1
                    break
        if st.last_reject is None or ts > st.last_reject:
            st.last_reject = ts

    def merge(self, states: Iterable[NodeState]) -> int:
        """Take in node states read from the store (a new leader's takeover: each node's
        newest stored sample, status and inventory), keeping whatever the view already holds
        that is newer. Returns how many nodes were merged."""
        n = 0
        for st in states:
            if st.inventory is not None and _newer(
                st.inventory_ts, self._nodes.get(st.node), "inventory_ts"
            ):
                self.on_inventory(st.inventory, st.inventory_ts or 0.0)
            if st.status is not None and _newer(
                st.status_ts, self._nodes.get(st.node), "status_ts"
            ):
                self.on_status(st.node, st.status, st.status_ts or 0.0)
            if st.sample is not None and st.sample_received is not None:
                self.on_sample(st.sample, st.sample_received)  # keeps a newer one
            n += 1
        return n

    def forget(self, *nodes: str, at: float | None = None) -> None:
        """Drop ``nodes`` (decommissioned: ``collector inventory forget``) and remember that
        they were, ``at`` that time if known (:meth:`forgotten_at`); a later message brings
        one back as a new node."""
        self.forget_at(dict.fromkeys(nodes, at))

    def forget_at(self, when: Mapping[str, float | None]) -> None:
        """:meth:`forget` each node of ``when`` at its time: the collector's writer calls this
        when it reads the store's ``forgotten_nodes``, a starting collector with those the
        store has not heard of since."""
        for node in when:
            st = self._nodes.pop(node, None)
            self._reject_only -= st is not None and st.reject_only
        forgotten = {k: v for k, v in self._forgotten.items() if k not in when}
        forgotten.update(when)
        if len(forgotten) > self.max_nodes:
            # The newest by forget time are kept, whatever the order they came in (a starting
            # collector's come latest first); an unknown time counts as the oldest.
            kept = sorted(forgotten.items(), key=_forget_time)[-self.max_nodes :]
            forgotten = dict(kept)
        self._forgotten = forgotten

    def was_forgotten(self, node: str) -> bool:
        """Whether ``node`` was forgotten (:meth:`forget`) and sent nothing since."""
        return node in self._forgotten

    def forgotten_at(self, node: str) -> float | None:
        """When ``node`` was forgotten (Unix s), while it was and sent nothing since
        (``None``: it was not, or the time is not known)."""
        return self._forgotten.get(node)

    # -- queries (rules)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def get(self, node: str) -> NodeState | None:
        """The node's state, or ``None`` when the view does not know it."""
        return self._nodes.get(node)

    def nodes(self) -> Iterator[NodeState]:
        """Every known node, in the order first seen."""
        return iter(self._nodes.values())

    def rejects(self, st: NodeState, now: float, window_s: float, reason: str | None = None) -> int:
        """Rejects of ``reason`` (any when ``None``) counted in the buckets of the last window.

        Whole buckets: the window is rounded out to the bucket that holds ``now - window_s``.
        """
        if st.last_reject is None or st.last_reject < now - window_s - self.reject_bucket_s:
            return 0
        first = int((now - window_s) // self.reject_bucket_s)
        last = int(now // self.reject_bucket_s)
        if reason is None:
            series = list(st.rejects.values())
        else:
            one = st.rejects.get(reason)
            series = [] if one is None else [one]
        total = 0
        for buckets in series:
            for b, n in reversed(buckets):
                if b < first:
                    break
                if b <= last:
                    total += n
        return total

    def reject_series(self, st: NodeState, now: float, reason: str | None = None) -> list[int]:
        """Counts per bucket over the whole ring, oldest first, the last one holding ``now``."""
        last = int(now // self.reject_bucket_s)
        first = last - self.reject_buckets + 1
        out = [0] * self.reject_buckets
        series = st.rejects.values() if reason is None else [st.rejects.get(reason, deque())]
        for buckets in series:
            for b, n in buckets:
                if first <= b <= last:
                    out[b - first] += n
        return out

    def xids_since(self, st: NodeState, since: float) -> list[XidSeen]:
        """XID events whose sample arrived at or after ``since`` (collector clock)."""
        return [x for x in st.xids if x.received >= since]

    # -- internals

    def _track_seq(self, st: NodeState, sample: Sample, received: float) -> None:
        """Note a jump in ``seq`` within the node's newest epoch as a gap (a few compares
        per sample). A duplicate or an older epoch's late sample changes nothing. A gap
        counts at most the sample intervals that passed on the node's clock: more samples
        than that were never numbered by a sane agent."""
        epoch = _NO_EPOCH if sample.epoch is None else sample.epoch
        seq = sample.seq
        last = st.seq_last
        if (
            last is None
            or st.seq_feed != self._feed_run
            or agent_restarted(
                epoch, sample.ts, st.seq_epoch, st.seq_ts, seq=seq, prior=st.prior_run
            )
            or (epoch == _NO_EPOCH and seq < last and sample.ts > st.seq_ts)
        ):
            # The first sample (of this feed run, with from_feed), a new start (a higher
            # epoch; or an older agent's wiped spool counting from 0 again), or an agent
            # before epochs restarting at 0 (its sample is newer than the last: an older one
            # is a late duplicate).
            st.seq_epoch, st.seq_last, st.seq_ts = epoch, seq, sample.ts
            st.seq_feed = self._feed_run
            return
        if epoch < st.seq_epoch or seq <= last:
            return
        # The next seq (nearly every sample): nothing numbered between, nothing missing.
        missing = (
            0
            if seq == last + 1
            else gap_missing(last, seq, sample.ts - st.seq_ts, sample.interval_s)
        )
        if missing:
            gap = SeqGap(
                None if epoch == _NO_EPOCH else epoch, last, missing, st.seq_ts, sample.ts, received
            )
            st.gaps = _kept(st.gaps, gap, self.max_gaps)
            st.missing_total += missing
            self.gaps_total += 1
            self.missing_total += missing
        st.seq_last, st.seq_ts = seq, sample.ts

    def conflicts_since(self, st: NodeState, since: float) -> int:
        """Samples of ``st`` that showed a second agent and arrived at or after ``since``
        (collector clock), of the last ``max_conflicts``."""
        return sum(1 for t in st.conflicts if t >= since)

    def _two_agents(self, st: NodeState, received: float) -> None:
        """Note a sample of ``st`` that showed a second agent publishing as its node."""
        st.conflicts = _kept(st.conflicts, received, self.max_conflicts)
        self.conflicts_total += 1

    def missing_since(self, st: NodeState, since: float) -> int:
        """Samples missing in ``st``'s gaps that showed up at or after ``since``."""
        return sum(g.missing for g in st.gaps if g.received >= since)

    def _keep_xids(self, st: NodeState, sample: Sample, received: float) -> None:
        """Keep each GPU's newest event per code, its last ``max_xids_per_gpu`` codes."""
        if not sample.xids:
            return
        held = {(x.gpu_index, x.xid): x for x in st.xids}
        changed = False
        stamped = sample.ts
        for ev in sample.xids:
            key = (ev.gpu_index, ev.xid)
            old = held.get(key)
            # An event happened before the sample reporting it: one stamped later (a time the
            # skew check of the sample's own never saw, up to 2099) counts as of the sample,
            # or held it would make every later event of its code "older" until then.
            ts = ev.ts if ev.ts <= stamped else stamped
            # A resent sample must not count its XIDs twice; an older event of a code held
            # (a late sample) adds nothing to what the rules know of the GPU.
            if old is None or ts > old.ts:
                if old is not None:
                    del held[key]  # the newer goes last: dicts keep insertion order
                held[key] = XidSeen(ev.gpu_index, ev.xid, ts, received)
                changed = True
        if not changed:
            return
        per_gpu: dict[int, int] = {}
        for x in reversed(held.values()):  # newest first
            per_gpu[x.gpu_index] = per_gpu.get(x.gpu_index, 0) + 1
        keep = self.max_xids_per_gpu
        xids: deque[XidSeen] = deque()  # copy on write
        for x in held.values():
            n = per_gpu[x.gpu_index]
            if n > keep:  # this GPU's oldest codes beyond its last `keep`
                per_gpu[x.gpu_index] = n - 1
                self.xids_dropped += 1
                continue
            xids.append(x)
        st.xids = xids

    def room_for(self, node: str) -> bool:
        """Whether a valid message of ``node`` will be held: it is, or there is room (a free
        slot, or a reject-only node that a valid message evicts). O(1): the validator asks
        before every message. It evicts nothing: a message is still to be validated, and a
        rejected one never evicts."""
        return node in self._nodes or len(self._nodes) < self.max_nodes or self._reject_only > 0

    def _get(self, node: str, *, real: bool) -> NodeState | None:
        st = self._nodes.get(node)
        if st is not None:
            if real and st.reject_only:  # the caller makes it real
                self._reject_only -= 1
            return st
        if len(self._nodes) >= self.max_nodes and not (real and self._evict_reject_only()):
            self.refused += 1
            return None
        st = self._nodes[node] = NodeState(node)
        self._reject_only += not real
        if node in self._forgotten:
            self._forgotten = {k: v for k, v in self._forgotten.items() if k != node}
        return st

    def _evict_reject_only(self) -> bool:
        if not self._reject_only:
            return False
        victim: NodeState | None = None
        for st in self._nodes.values():
            if st.reject_only and (
                victim is None or (st.last_reject or 0.0) < (victim.last_reject or 0.0)
            ):
                victim = st
        if victim is None:  # not reached while the count is right
            self._reject_only = 0
            return False
        del self._nodes[victim.node]
        self._reject_only -= 1
        self.evicted += 1
        return True


def _newer(ts: float | None, held: NodeState | None, field: str) -> bool:
    """Whether a stored fact stamped ``ts`` is newer than what ``held`` has in ``field``."""
    if ts is None:
        return False
    have: float | None = None if held is None else getattr(held, field)
    return have is None or have < ts


def _kept(items: tuple[_T, ...], item: _T, keep: int) -> tuple[_T, ...]:
    """``items`` with ``item`` added, the last ``keep`` of them (a new tuple: a snapshot may
    be reading the old one)."""
    return (*items[-(keep - 1) :], item) if keep > 1 else (item,)


def _later_sample(
    sample: Sample,
    held: Sample,
    held_run_ts: float,
    prior: tuple[int, int, float] | None,
) -> bool:
    """Whether ``sample`` is newer than ``held``. Within one agent run (the same epoch) by
    ``seq``, whatever the node's clock did: by time, a clock stepped back (NTP correcting a
    node that booted ahead, or one sample stamped 299 s ahead) froze the node's view for as
    long as the step, and ``NodeStale`` fired while it sent every interval; and a second
    sender in the run (an agent cloned with its spool) numbering seqs again, stamped later,
    is not newer: the higher seq keeps the node. Across runs as
    :func:`~collector.nodefacts.agent_restarted` says, against the newest time of
    ``held``'s run (``held_run_ts``) and the run it took over from (``prior``); by time for
    agents before epochs.

    The store's watermarks follow the same rule in the order the samples are stored
    (:mod:`collector.ingest.watermark`), and its reads show the newest sample they name
    (:func:`collector.store.queries.latest_sample`): one newest sample per node, here and
    in ``collector query``."""
    if sample.epoch is None or held.epoch is None:
        return sample.ts > held.ts
    if sample.epoch == held.epoch:
        return sample.seq > held.seq
    return agent_restarted(
        sample.epoch, sample.ts, held.epoch, held_run_ts, seq=sample.seq, prior=prior
    )


def _untracked(inventory: Inventory) -> Inventory:
    """``inventory`` with its four arrays as tuples, as the view holds it for as long as the
    node lives. The lists msgspec decodes are tracked by the cyclic garbage collector for
    good; a tuple of untracked structs (the schema's are ``gc=False``) is untracked at its
    first collection. At 12,500 nodes that is 50,000 objects out of every full pass: 10-11.5 ms
    of CPU a pass with them, 0.7 ms without (:mod:`collector.heap`). The view only reads
    them (iterates, counts, encodes)."""
    return msgspec.structs.replace(
        inventory,
        gpus=tuple(inventory.gpus),
        nics=tuple(inventory.nics),
        cpus=tuple(inventory.cpus),
        accelerators=tuple(inventory.accelerators),
    )


def _forget_time(item: tuple[str, float | None]) -> float:
    """A forgotten node's forget time, to keep the newest (unknown: the oldest)."""
    return -math.inf if item[1] is None else item[1]
