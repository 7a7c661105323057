"""What a node is, decided once: its state, GPU power, busy GPUs, measures and hardware.

Every part of the collector that asks one of these questions asks here: the live view and
the alert rules (``NodeStale``, and which sample the GPU rules read), the capacity picture,
governance usage (the daemon's and ``quota show --from-store``), ``collector query``,
the inventory and pool commands, and ``/metrics``. They take a node's facts from the live
view (:class:`~collector.live.NodeState`) or from the store's newest rows; the answer is the
same function of the same values.

**State** (:meth:`Staleness.state`), on the collector's clock:

- ``offline``: its status topic says so (the agent said it, or the broker published its last
  will), whatever its samples;
- ``stale``: not offline, and its newest sample arrived more than ``stale_intervals`` x that
  sample's own interval ago, an interval taken as no shorter than the evaluation interval
  (``alerts.eval_interval_s``, :attr:`Staleness.min_interval_s`);
- ``online`` otherwise.

**The shortest interval believed.** A node says its own interval (the wire schema allows
10 ms), but the rules look at the fleet once per evaluation interval: a node claiming 10 ms
and sending every second would be stale 30 ms after each sample, so at every other
evaluation, and ``NodeStale`` would fire and resolve at the evaluation rate. Staleness
therefore counts a node's interval as at least the evaluation interval: with the defaults a
node is stale after max(3 x its interval, 3 x 1 s). The same floor holds for a node that
has not sampled yet (``expected_interval_s``) and for power readings (:meth:`Staleness.fresh`).

**A node that is not offline and has never sent a sample** is ``online`` (awaiting its first
sample) for ``stale_intervals`` x ``expected_interval_s`` from when the collector heard it
come online (its ``online`` status; a node known only by its inventory: when the inventory
arrived), then ``stale``; one the collector heard nothing of but its name is ``stale``.
Why: an agent publishes its status at connect and its first sample one interval later, and a
restarted collector gets every retained ``online`` status before the next round of samples;
calling those nodes stale at once would page for every node at each restart. Calling them
online for ever would hide an agent that connects and never samples (a broken GPU driver
hanging the sampler). Kubernetes' node lifecycle controller answers the same question the
same way: a node that never posted its status gets the grace period counted from its
registration, then goes ``Unknown``. Such a node has no measures: it counts no GPUs, power
or utilisation, and the capacity picture counts it at its nameplate.

**Measures** come only from an online node's newest sample (:func:`measure`): a stale or
offline node's last sample says what it did, not what it does. **GPU power** of one GPU is
the interval power from the energy counter (``power_interval_w``, the accurate figure) when
the sample has it, else the instantaneous reading (``power_w``); a GPU is **busy** at or
above the utilisation threshold. **Hardware** (:func:`hardware`): the inventory's GPUs and
the sum of their enforced power limits, as far as the node's own samples bear them out: a
node's inventory is its claim (a node may announce 64 GPUs of 5 kW each, all inside the
wire schema), and leases and quotas count what it holds. The count is at most the schema's
:data:`~shared.schema.MAX_GPUS` and at most the GPUs its newest sample lists (what NVML
enumerated, when a sample is known); the power is that many of its GPUs' limits, each at
most :data:`~shared.schema.MAX_GPU_POWER_W`, the lowest ones. The conservative reading of
two claims that disagree: a node counts the GPUs both name, so a GPU gone from its samples
(fallen off the bus, the driver down) is not counted as held until it is back.

**Node power** (:meth:`Staleness.node_power_w`): the node's input power as its BMC or PSU
sensors read it (:class:`PowerReading`: from the agent's sample, or polled by the collector
out of band), while it is fresh: no older than
``stale_intervals`` x the interval its source reports at, whatever the agent's state (a node
whose agent died still draws what its BMC says); a rack's reading from its PDUs is fresh by
the same rule (:meth:`Staleness.fresh`). Values past the wire schema's bounds
(:data:`shared.schema.MAX_GPU_POWER_W`, :data:`~shared.schema.MAX_CPU_POWER_W`) cannot be
decoded; sums are still clamped to them, so a state built by hand cannot exceed them either.

**Rack** (:func:`rack_of`): the operator's racks win (the plan's ``[[capacity.racks]]``, first
rule whose patterns name the node), else the node's xname cabinet (HPE Cray's xname
``x1001c1s5b0n0`` stands in cabinet ``x1001``), else none. A rack's name is spelled one way
(:func:`rack_name`: a cabinet in lower case without leading zeros, as CSM normalises
xnames), so the capacity picture, ``/sd``'s labels, the PDUs' racks and ``pool apply``'s
fewest racks all name the same rack for the same node.

Pure: no I/O, no clock; the caller passes ``now``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:  # annotations only: `collector query` (states only) does not load the
    # wire schema's msgspec
    from shared.schema import GpuSample, Sample

__all__ = [
    "DEFAULT_BUSY_UTIL_PCT",
    "DEFAULT_EVAL_INTERVAL_S",
    "DEFAULT_INTERVAL_S",
    "DEFAULT_STALENESS",
    "DEFAULT_STALE_INTERVALS",
    "STATES",
    "GpuFacts",
    "Hardware",
    "NodeFacts",
    "NodeMeasure",
    "PowerReading",
    "RackRule",
    "Staleness",
    "State",
    "agent_restarted",
    "gap_missing",
    "gpu_count",
    "gpu_facts",
    "gpu_power_w",
    "hardware",
    "measure",
    "rack_name",
    "rack_of",
    "sample_power",
]

State = Literal["online", "stale", "offline"]
STATES: Final[tuple[State, ...]] = ("online", "stale", "offline")

DEFAULT_STALE_INTERVALS: Final = 3.0
"""A node with no sample for this many of its intervals is stale (``stale_intervals``)."""
DEFAULT_INTERVAL_S: Final = 5.0
"""A node's sampling interval before its first sample says (``expected_interval_s``)."""
DEFAULT_EVAL_INTERVAL_S: Final = 1.0
"""How often the collector evaluates its alert rules by default (``alerts.eval_interval_s``),
and so the shortest sample interval :class:`Staleness` believes by default."""
DEFAULT_BUSY_UTIL_PCT: Final = 10.0
"""A GPU at or above this utilisation is busy (:func:`measure`) by default
(``governance.busy_util_pct``): the daemon's usage and rollups, and ``quota show``."""


class PowerReading(NamedTuple):
    """One reading of a node's input power, as the collector holds it."""

    watts: float
    source: str
    """``dcmi``, ``redfish``, ``hwmon`` (:data:`shared.schema.NODE_POWER_SOURCES`); a rack's:
    ``pdu``."""
    received: float
    """When it arrived (collector clock)."""
    interval_s: float
    """How often its source reports: the sample's interval, or the collector's poll interval."""


def agent_restarted(
    epoch: int,
    ts: float,
    held_epoch: int,
    held_ts: float,
    *,
    seq: int = 0,
    prior: tuple[int, int, float] | None = None,
) -> bool:
    """Whether sample ``seq`` of agent ``epoch`` stamped ``ts`` comes from a later run of
    the node's agent than the one held (``held_epoch``, its newest sample stamped
    ``held_ts``; any unit of time, the same for both).

    A higher epoch is the agent's next start, a reinstalled node's too: the agent keeps its
    epoch counter in its spool and starts a fresh directory at the wall clock in ms
    (:func:`agent.spoolfile.next_epoch`), past any epoch counted before. A lower epoch with a
    newer time is one too: an agent that counted a fresh spool from 0 (before that rule)
    whose directory was wiped. A lower epoch with an older time is a late sample of an
    earlier run, which the agent replays from its spool before the newer ones. A sample of
    the run the held one took over from (``prior``: its epoch, the highest seq it had
    reached and its newest time) numbered at or below that seq and stamped no later than
    that time is a late or repeated sample of that run (the broker redelivering after a
    reconnect, the agent filling a hole), not a start, whatever the held run's time: an
    agent run stamped behind the one before it (its clock set back between the two) was
    otherwise handed back to the old run by a duplicate. Stamped after it, it is a wiped
    spool counting from epoch 0 and seq 0 again (the rule before) when that run was epoch 0
    too: a start. The watermarks
    (:mod:`collector.ingest.watermark`) and the live view's newest sample and gaps
    (:mod:`collector.live`) all follow the node's newest run by this rule."""
    if prior is not None and epoch == prior[0] and seq <= prior[1] and ts <= prior[2]:
        return False
    return epoch > held_epoch or (epoch < held_epoch and ts > held_ts)


class _Bounds(NamedTuple):
    """The wire schema's bounds this module clamps to (:mod:`shared.schema`)."""

    node_power_w: float
    cpu_power_w: float
    gpu_power_w: float
    gpus: int


@functools.cache
def _bounds() -> _Bounds:
    """The schema's bounds, imported at the first call (see the imports): an import statement
    in :func:`sample_power`, which runs for every sample, cost ~1.2 us a call, this ~0.1 us."""
    from shared.schema import (  # noqa: PLC0415 (see the imports)
        MAX_CPU_POWER_W,
        MAX_GPU_POWER_W,
        MAX_GPUS,
        MAX_NODE_POWER_W,
    )

    return _Bounds(MAX_NODE_POWER_W, MAX_CPU_POWER_W, MAX_GPU_POWER_W, MAX_GPUS)


def gap_missing(seq_before: int, seq_after: int, elapsed_s: float, interval_s: float) -> int:
    """Samples missing between two samples of one agent run: those numbered between
    ``seq_before`` and ``seq_after``, but at most the intervals that passed on the node's own
    clock (``elapsed_s``; at least one). An agent numbers one sample per interval, so a jump
    past that is a node whose ``seq`` is not to be believed (a bug, a hostile node): it must
    not add 2**53 to what the fleet missed. The live view's gaps and ``collector query
    --gaps`` both count by this."""
    return max(0, min(seq_after - seq_before - 1, max(1, math.ceil(elapsed_s / interval_s))))


def sample_power(sample: Sample, received: float) -> PowerReading | None:
    """The node power a sample reports, as a reading (``None``: it reports none)."""
    w = sample.node_power_w
    if w is None:
        return None
    return PowerReading(
        min(max(w, 0.0), _bounds().node_power_w),
        sample.node_power_source or "unknown",
        received,
        sample.interval_s,
    )


class NodeFacts(Protocol):
    """What :meth:`Staleness.of` reads of a node (:class:`collector.live.NodeState` is one).

    A protocol, not the live view's class: the live view imports this module.
    """

    @property
    def sample(self) -> Sample | None: ...
    @property
    def sample_received(self) -> float | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def status_ts(self) -> float | None: ...
    @property
    def inventory_ts(self) -> float | None: ...
    @property
    def node_power(self) -> PowerReading | None: ...


_N = TypeVar("_N", bound=NodeFacts)


@dataclass(frozen=True, slots=True)
class Staleness:
    """When a node is stale: ``intervals`` x its sample interval without a sample.

    ``expected_interval_s`` stands for the interval of a node that has not sampled yet;
    ``min_interval_s`` is the shortest interval believed (the evaluation interval: see the
    module docstring).
    """

    intervals: float = DEFAULT_STALE_INTERVALS
    expected_interval_s: float = DEFAULT_INTERVAL_S
    min_interval_s: float = DEFAULT_EVAL_INTERVAL_S

    def limit_s(self, interval_s: float | None) -> float:
        """How long a sample (or a reading) whose source reports every ``interval_s``
        (``None``: not known, ``expected_interval_s``) still says what is: ``intervals`` x
        that interval, the interval taken as no shorter than ``min_interval_s``."""
        interval = interval_s or self.expected_interval_s
        least = self.min_interval_s
        # state() inlines these lines: it runs for every node at every evaluation, and the
        # call (or max()) cost a 12,500-node healthy cycle ~0.5-1 ms of its ~4.5 ms
        # (bench/bench_alerts.py).
        return self.intervals * (interval if interval > least else least)

    def state(
        self,
        now: float,
        *,
        status: str | None,
        status_ts: float | None,
        inventory_ts: float | None,
        received: float | None,
        interval_s: float | None,
    ) -> State:
        """The state of a node from its stored or live facts (see the module docstring).

        ``received``/``interval_s``: its newest sample's arrival and interval (``None``: no
        sample); ``status_ts``/``inventory_ts``: when its status and inventory arrived.
        """
        if status == "offline":
            return "offline"
        if received is not None:  # limit_s(interval_s), inlined (see there)
            interval = interval_s or self.expected_interval_s
            least = self.min_interval_s
            limit = self.intervals * (interval if interval > least else least)
            return "stale" if now - received > limit else "online"
        since = status_ts if status == "online" else inventory_ts
        if since is None or now - since > self.grace_s:
            return "stale"
        return "online"

    @property
    def grace_s(self) -> float:
        """How long a node heard of but not yet sampling is ``online`` (awaiting its first
        sample) before it is ``stale``: also how long a restarted collector holds its
        restored alerts while the live view refills."""
        return self.limit_s(None)

    @property
    def least_limit_s(self) -> float:
        """The least limit any node has (:meth:`limit_s` takes no interval as shorter than
        ``min_interval_s``): a sample newer than this is fresh whatever its interval."""
        return self.limit_s(self.min_interval_s)

    def stale_among(self, nodes: Iterable[_N], now: float) -> Iterator[_N]:
        """The nodes of ``nodes`` that :meth:`of` calls stale at ``now``, in their order.

        A node whose newest sample is newer than :attr:`least_limit_s` is fresh whatever its
        interval and status: most nodes end there, without :meth:`of` and :meth:`state`,
        whose two calls were half of a 12,500-node healthy alert cycle
        (bench/bench_alerts.py)."""
        least = self.least_limit_s
        state = self.of
        for st in nodes:
            received = st.sample_received
            if received is not None and now - received <= least:
                continue
            if state(st, now) == "stale":
                yield st

    def of(self, st: NodeFacts, now: float) -> State:
        """The state of a live-view node."""
        sample = st.sample
        return self.state(
            now,
            status=st.status,
            status_ts=st.status_ts,
            inventory_ts=st.inventory_ts,
            received=st.sample_received,
            interval_s=None if sample is None else sample.interval_s,
        )

    def node_power(self, st: NodeFacts, now: float) -> PowerReading | None:
        """``st``'s input power reading while it is fresh (``None``: none, or too old)."""
        r = st.node_power
        return r if r is not None and self.fresh(r, now) else None

    def fresh(self, reading: PowerReading, now: float) -> bool:
        """Whether a power reading (a node's, or a rack's from its PDUs) still says what is
        drawn at ``now``: no older than ``intervals`` x the interval its source reports at
        (:meth:`limit_s`)."""
        return self.within(reading.received, reading.interval_s, now)

    def within(self, received: float, interval_s: float | None, now: float) -> bool:
        """Whether what arrived at ``received`` from a source that reports every
        ``interval_s`` still says what is at ``now`` (:meth:`limit_s`): a power reading
        (:meth:`fresh`), a node's newest sample (what :meth:`state` inlines)."""
        return now - received <= self.limit_s(interval_s)

    def current(self, st: NodeFacts, now: float) -> Sample | None:
        """The sample that says what ``st`` does now: its newest, while it is online."""
        sample = st.sample
        if sample is None or self.of(st, now) != "online":
            return None
        return sample


DEFAULT_STALENESS: Final = Staleness()
"""The defaults (immutable: a safe default argument)."""


class GpuPower(Protocol):
    """A GPU's two power readings: a :class:`~shared.schema.GpuSample`, or a struct that
    decodes only what it reads."""

    @property
    def power_w(self) -> float | None: ...
    @property
    def power_interval_w(self) -> float | None: ...


def gpu_power_w(gpu: GpuPower) -> float | None:
    """One GPU's power: interval power when reported, else the instantaneous reading."""
    w = gpu.power_interval_w
    return gpu.power_w if w is None else w


@dataclass(frozen=True, slots=True)
class NodeMeasure:
    """One online node's measures from its newest sample."""

    gpus: int
    busy_gpus: int
    """GPUs at or above the busy threshold."""
    power_w: float | None
    """GPU + CPU package power (``None``: neither reported)."""
    util_pct: float | None = None
    """Mean GPU utilisation of the sample (``None``: not reported)."""
    gpu_power_w: float | None = None
    """The GPUs' power alone (:func:`gpu_power_w` summed; ``None``: not reported)."""


def measure(sample: Sample, busy_util_pct: float) -> NodeMeasure:
    """The measures of one sample; a GPU is busy at ``busy_util_pct`` or more."""
    bounds = _bounds()
    max_cpu_w, max_gpu_w = bounds.cpu_power_w, bounds.gpu_power_w
    # One pass, few calls: this runs for every leased node at every evaluation.
    busy = n_util = 0
    util_sum = gpu_w = 0.0
    gpu_known = False
    for g in sample.gpus:
        u = g.util_pct
        if u is not None:
            n_util += 1
            util_sum += u
            if u >= busy_util_pct:
                busy += 1
        w = gpu_power_w(g)
        if w is not None:
            gpu_w += w
            gpu_known = True
    gpus = len(sample.gpus)
    gpu_w = min(max(gpu_w, 0.0), max_gpu_w * gpus)
    watts = gpu_w
    cpu = sample.cpu_power_w
    if cpu is not None:
        watts += min(max(cpu, 0.0), max_cpu_w)
    return NodeMeasure(
        gpus=gpus,
        busy_gpus=busy,
        power_w=watts if gpu_known or cpu is not None else None,
        util_pct=min(max(util_sum / n_util, 0.0), 100.0) if n_util else None,
        gpu_power_w=gpu_w if gpu_known else None,
    )


class Hardware(NamedTuple):
    """What a node's inventory holds: GPUs and the sum of their enforced power limits."""

    gpus: int
    gpu_power_limit_w: float


class _GpuLimit(Protocol):
    @property
    def power_limit_w(self) -> float | None: ...


class _HasGpus(Protocol):
    @property
    def gpus(self) -> Sequence[_GpuLimit]: ...


def hardware(inv: _HasGpus, shown: int | None = None) -> Hardware:
    """The hardware counts of one inventory (a decoded :class:`~shared.schema.Inventory`,
    or any struct with its ``gpus[].power_limit_w``: a reader that decodes only those),
    bounded as the module says: ``shown``, the GPUs of the node's newest sample (``None``:
    no sample known, the inventory's count, at most ``MAX_GPUS``)."""
    bounds = _bounds()
    max_gpus = bounds.gpus
    limits = sorted(min(max(g.power_limit_w or 0.0, 0.0), bounds.gpu_power_w) for g in inv.gpus)
    n = min(len(limits), max_gpus, max_gpus if shown is None else max(shown, 0))
    return Hardware(n, sum(limits[:n]))


def gpu_count(inventory: int | None, reported: int | None) -> int:
    """How many GPUs a node has: its inventory's (:func:`hardware`: its agent's, else a
    declared one); a node whose agent has sent none, what its samples reported at the time
    (the length of their GPU array, :func:`measure`'s ``gpus``: what NVML enumerated; hour
    by hour, an hour it was silent in its last report's before:
    :class:`~collector.store.ledger.GpuHistory`); 0 with neither. What a lease allocates of
    the node (the usage ledger, ``collector usage``: :func:`collector.governance.billing.
    node_gpus`)."""
    if inventory is not None:
        return inventory
    return reported or 0


_CABINET: Final = re.compile(r"x([0-9]{1,4})\Z", re.IGNORECASE)
_XNAME: Final = re.compile(r"x([0-9]{1,4})c[0-7]s[0-9]+b[0-9]+n[0-9]+\Z", re.IGNORECASE)
"""cabinet, chassis, slot, board (BMC), node (HPE Cray CSM's component names)."""


class RackRule(Protocol):
    """One of the operator's racks (``[[capacity.racks]]``): its name and the nodes it holds."""

    @property
    def name(self) -> str: ...
    @property
    def regex(self) -> re.Pattern[str]: ...


def rack_name(name: str) -> str:
    """A rack's name as every consumer spells it: an xname cabinet normalised (``X01001`` ->
    ``x1001``), any other name as given."""
    m = _CABINET.match(name)
    return name if m is None else f"x{int(m.group(1))}"


def rack_of(node: str, rules: Sequence[RackRule] = ()) -> str | None:
    """The rack ``node`` stands in: the first of ``rules`` whose patterns name it, else its
    xname cabinet (``X01001c1s5b0n0`` -> ``x1001``), else ``None``."""
    for rule in rules:
        if rule.regex.match(node):
            return rule.name
    m = _XNAME.match(node)
    return None if m is None else f"x{int(m.group(1))}"


_NAN: Final = math.nan
_new_tuple = tuple.__new__  # GpuFacts(...) goes through a Python-level __new__; this does not.


class GpuFacts(NamedTuple):
    """What the collector keeps of one sample's GPUs, from one pass over them
    (:func:`gpu_facts`): the live view's summaries (:class:`collector.live.NodeState`), the
    stored row's (:func:`collector.ingest.validate.sample_row`), and the readings the rollups
    pack (:func:`collector.store.rollups.pack_readings`)."""

    max_temp_c: float | None
    clock_reasons: int
    """Bitwise OR of the GPUs' ``clock_event_reasons``."""
    power_w: float | None
    """Sum of the GPUs' :func:`gpu_power_w` (``None``: none known)."""
    util_sum: float
    util_n: int
    """GPUs that report utilisation, and the sum of their percentages."""
    min_util_pct: float | None
    mem_used_bytes: int | None
    """Sum of the GPUs' memory used (``None``: none reported)."""
    health: bool
    """Some GPU carries ECC counters or its row remapping (agents send them on slow ticks)."""
    readings: list[float]
    """Per GPU, its index, utilisation %, :func:`gpu_power_w`, temperature C and memory used
    bytes, NaN for unreported: what the rollups' GPU records keep."""


def gpu_facts(gpus: Sequence[GpuSample]) -> GpuFacts:
    """:class:`GpuFacts` of ``gpus``. One loop: the live view's summaries, the row's and
    the rollups' readings were three loops over the GPUs (~18,000 instructions more per
    8-GPU sample, ``bench/bench_validate.py --callgrind``)."""
    max_temp: float | None = None
    reasons = 0
    power: float | None = None
    util_sum = 0.0
    util_n = 0
    min_util: float | None = None
    mem: int | None = None
    health = False
    readings: list[float] = []
    nan = _NAN
    for g in gpus:
        u, t, m = g.util_pct, g.temp_c, g.mem_used_bytes
        # gpu_power_w(g), inlined: the call was +5,500 instructions an 8-GPU sample (1.5 %
        # of validation, bench/bench_validate.py --callgrind); test_validate holds these
        # readings' bytes to pack_gpus', which calls it.
        w = g.power_interval_w
        if w is None:
            w = g.power_w
        if u is not None:
            util_sum += u
            util_n += 1
            if min_util is None or u < min_util:
                min_util = u
        if w is not None:
            power = w if power is None else power + w
        if t is not None and (max_temp is None or t > max_temp):
            max_temp = t
        if m is not None:
            mem = m if mem is None else mem + m
        r = g.clock_event_reasons
        if r:
            reasons |= r
        if g.ecc is not None or g.remapped_rows is not None:
            health = True
        readings += (
            g.index,
            nan if u is None else u,
            nan if w is None else w,
            nan if t is None else t,
            nan if m is None else m,  # an int: struct converts it as float() would
        )
    return _new_tuple(
        GpuFacts, (max_temp, reasons, power, util_sum, util_n, min_util, mem, health, readings)
    )
