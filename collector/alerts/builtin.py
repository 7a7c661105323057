"""The built-in rules: node health, GPU hardware trouble, and what the ingest path rejects.

:func:`builtin_rules` builds them from the ``[alerts]`` settings
(:class:`collector.alerts.settings.AlertSettings`: thresholds, ``for`` and ``keep_firing_for``
of each) and the collector's :class:`~collector.nodefacts.Staleness`. Labels: ``alertname``,
``severity``, ``node``; per-GPU rules add ``gpu`` (the index) and ``uuid`` where the node
told us.

Every condition first checks a per-node summary the live view keeps (hottest GPU, OR of the
clock-event bits, "some GPU has uncorrected ECC", ...), so a healthy node costs a couple of
attribute reads per rule and only a suspicious node is looked at GPU by GPU.

Temperature and clock rules read only an online node's newest sample
(:meth:`collector.nodefacts.Staleness.current`): a node that stopped sending is
``NodeStale`` (or ``NodeOffline``), not a GPU stuck at its last temperature forever. ECC
and row-remapping state is the last one reported (agents send it on slow ticks) and is kept
while the node is stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from collector.alerts.names import BUILTIN
from collector.alerts.rule import Instance, Rule, enabled_rules
from collector.alerts.settings import CRITICAL_XIDS, AlertSettings
from collector.jobfacts import jobs_on
from collector.live import LiveView, NodeState
from collector.nodefacts import DEFAULT_STALENESS, Staleness

__all__ = [
    "CLOCK_EVENT_NAMES",
    "HW_POWER_BRAKE_SLOWDOWN",
    "HW_SLOWDOWN",
    "HW_THERMAL_SLOWDOWN",
    "SW_THERMAL_SLOWDOWN",
    "THROTTLE_MASK",
    "builtin_rules",
]

# Clock event (formerly "throttle") reason bits, as NVML's nvml.h defines them
# (nvmlClocksEventReasonHwSlowdown etc., also in pynvml). Only the ones that mean heat or a
# power brake: SW power cap (0x4) is the configured limit doing its job, idle (0x1) is idle.
HW_SLOWDOWN: Final = 0x8
"""nvmlClocksEventReasonHwSlowdown: hardware slowdown (thermal, power brake or PSU)."""
SW_THERMAL_SLOWDOWN: Final = 0x20
"""nvmlClocksEventReasonSwThermalSlowdown: driver lowered clocks to keep under max temp."""
HW_THERMAL_SLOWDOWN: Final = 0x40
"""nvmlClocksEventReasonHwThermalSlowdown: hardware thermal slowdown."""
HW_POWER_BRAKE_SLOWDOWN: Final = 0x80
"""nvmlClocksEventReasonHwPowerBrakeSlowdown: external power brake assertion."""

CLOCK_EVENT_NAMES: Final = {
    HW_SLOWDOWN: "hw_slowdown",
    SW_THERMAL_SLOWDOWN: "sw_thermal",
    HW_THERMAL_SLOWDOWN: "hw_thermal",
    HW_POWER_BRAKE_SLOWDOWN: "hw_power_brake",
}

THROTTLE_MASK: Final = (
    HW_SLOWDOWN | SW_THERMAL_SLOWDOWN | HW_THERMAL_SLOWDOWN | HW_POWER_BRAKE_SLOWDOWN
)
"""The clock event reasons ``GpuClockThrottled`` fires on: heat and power brakes."""


def builtin_rules(
    settings: AlertSettings | None = None, staleness: Staleness = DEFAULT_STALENESS
) -> list[Rule]:
    """The built-in rules configured by ``settings`` (the defaults when ``None``), less those
    it disables; ``staleness``: when a node is stale (the top-level ``stale_intervals`` and
    ``expected_interval_s``)."""
    s = settings or AlertSettings()
    rules = [
        _node_offline(s),
        _node_stale(s, staleness),
        _gpu_temperature(s, staleness),
        _gpu_xid(s),
        _gpu_ecc(s),
        _gpu_row_remap(s),
        _gpu_clock_throttled(s, staleness),
        _node_clock_skew(s),
        _node_rejects_rising(s),
        _node_samples_missing(s),
        _node_agent_conflict(s),
        _job_gpu_idle(s, staleness),
    ]
    return enabled_rules(rules, s.disabled, field="alerts.disabled")


def _uuid(st: NodeState, index: int) -> str | None:
    sample = st.sample
    if sample is not None:
        gpus = sample.gpus
        if index < len(gpus) and gpus[index].index == index:
            return gpus[index].uuid
        for g in gpus:
            if g.index == index:
                return g.uuid
    if st.inventory is not None:
        for info in st.inventory.gpus:
            if info.index == index:
                return info.uuid
    return None


def _gpu_labels(st: NodeState, index: int, uuid: str | None = None) -> dict[str, str]:
    labels = {"node": st.node, "gpu": str(index)}
    uuid = uuid or _uuid(st, index)
    if uuid is not None:
        labels["uuid"] = uuid
    return labels


def _counted(st: NodeState, n: int) -> Instance:
    """The alert of a rule that counts a node's events in its window: the node, and ``n``."""
    return Instance({"node": st.node}, {"count": str(n)})


# -- node rules


def _node_offline(s: AlertSettings) -> Rule:
    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        for st in view.nodes():
            if st.status == "offline":
                since = st.status_ts if st.status_ts is not None else now
                yield Instance({"node": st.node}, {"for_s": f"{now - since:.0f}"})

    return Rule(
        name=BUILTIN.NodeOffline,
        severity="critical",
        summary="Node {node} is offline",
        description=(
            "The agent on {node} said offline, or the broker published its last will, "
            "{for_s} s ago. No samples arrive from it."
        ),
        condition=condition,
        for_s=s.offline_for_s,
        keep_firing_for_s=s.offline_keep_firing_for_s,
    )


def _node_stale(s: AlertSettings, staleness: Staleness) -> Rule:
    intervals = staleness.intervals
    floor = staleness.least_limit_s
    stale_among = staleness.stale_among

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        for st in stale_among(view.nodes(), now):
            if not st.reject_only:
                received = st.sample_received
                age = "never" if received is None else f"{now - received:.0f} s ago"
                yield Instance({"node": st.node}, {"last": age})

    return Rule(
        name=BUILTIN.NodeStale,
        severity="warning",
        summary="No samples from {node} (last: {last})",
        description=(
            f"{{node}} is not offline but sent no sample for {intervals:g} of its sample "
            f"intervals, and for {floor:g} s at least (last one: {{last}}; a node that never "
            "sampled: since it came online): agent hung, network or broker trouble."
        ),
        condition=condition,
        for_s=s.stale_for_s,
        keep_firing_for_s=s.stale_keep_firing_for_s,
    )


# -- GPU rules


def _gpu_temperature(s: AlertSettings, staleness: Staleness) -> Rule:
    limit = s.gpu_temp_c
    current = staleness.current

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        for st in view.nodes():
            hottest = st.max_temp_c
            if hottest is None or hottest < limit:
                continue
            sample = current(st, now)
            if sample is None:
                continue
            for g in sample.gpus:
                if g.temp_c is not None and g.temp_c >= limit:
                    yield Instance(_gpu_labels(st, g.index, g.uuid), {"temp_c": f"{g.temp_c:.0f}"})

    return Rule(
        name=BUILTIN.GpuTemperature,
        severity="warning",
        summary="GPU {gpu} on {node} at {temp_c} °C",
        description=(
            f"GPU {{gpu}} ({{uuid}}) on {{node}} is at {{temp_c}} °C, at or above "
            f"{limit:g} °C: check cooling and airflow before it throttles or shuts down."
        ),
        condition=condition,
        for_s=s.gpu_temp_for_s,
        keep_firing_for_s=s.gpu_temp_keep_firing_for_s,
    )


def _gpu_xid(s: AlertSettings) -> Rule:
    """One alert per GPU, as dcgm-exporter's ``DCGM_FI_DEV_XID_ERRORS`` is one series per
    GPU: the codes it reported in the window are the alert's values, not its labels, so a
    node holds at most one ``GpuXid`` per GPU (``MAX_GPUS``, the rule's ``max_per_node``)
    whatever its GPUs and codes; an alert per GPU and code let 9 GPUs x 8 codes pass the
    bound and lose alerts."""
    codes = frozenset(s.xid_codes)
    window = s.xid_window_s

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        since = now - window
        for st in view.nodes():
            xids = st.xids
            if not xids:
                continue
            by_gpu: dict[int, list[int]] = {}
            for x in xids:
                if x.received >= since and x.xid in codes:
                    seen = by_gpu.setdefault(x.gpu_index, [])
                    if x.xid not in seen:
                        seen.append(x.xid)
            for gpu, seen in sorted(by_gpu.items()):
                seen.sort()
                yield Instance(
                    _gpu_labels(st, gpu),
                    {
                        "xid": ", ".join(map(str, seen)),
                        "meaning": "; ".join(CRITICAL_XIDS.get(x, "hardware error") for x in seen),
                    },
                )

    return Rule(
        name=BUILTIN.GpuXid,
        severity="critical",
        summary="XID {xid} on GPU {gpu} of {node}: {meaning}",
        description=(
            "The driver reported XID {xid} ({meaning}) on GPU {gpu} ({uuid}) of {node}. "
            "Drain the node and follow NVIDIA's XID catalogue for this code."
        ),
        condition=condition,
        keep_firing_for_s=s.xid_keep_firing_for_s,
    )


def _gpu_ecc(s: AlertSettings) -> Rule:
    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        for st in view.nodes():
            if not st.ecc_uncorrected_any:
                continue
            for index, ecc in sorted(st.ecc.items()):
                count = ecc.uncorrected_volatile or 0
                if count > 0:
                    yield Instance(_gpu_labels(st, index), {"count": str(count)})

    return Rule(
        name=BUILTIN.GpuEccUncorrectable,
        severity="critical",
        summary="{count} uncorrectable ECC errors on GPU {gpu} of {node}",
        description=(
            "GPU {gpu} ({uuid}) on {node} counted {count} uncorrected (volatile) ECC errors "
            "since the driver loaded: memory contents were lost; jobs on it may be corrupt."
        ),
        condition=condition,
        keep_firing_for_s=s.ecc_keep_firing_for_s,
    )


def _gpu_row_remap(s: AlertSettings) -> Rule:
    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        for st in view.nodes():
            if not st.remap_bad_any:
                continue
            for index, rows in sorted(st.remapped_rows.items()):
                if rows.pending or rows.failure:
                    what = " and ".join(
                        w for w, on in (("pending", rows.pending), ("failure", rows.failure)) if on
                    )
                    yield Instance(_gpu_labels(st, index), {"remap": what})

    return Rule(
        name=BUILTIN.GpuRowRemap,
        severity="critical",
        summary="Row remapping {remap} on GPU {gpu} of {node}",
        description=(
            "GPU {gpu} ({uuid}) on {node} reports row remapping {remap}. Pending: reset the "
            "GPU to apply the remap; failure: the GPU is out of spare rows, replace it."
        ),
        condition=condition,
        keep_firing_for_s=s.ecc_keep_firing_for_s,
    )


def _gpu_clock_throttled(s: AlertSettings, staleness: Staleness) -> Rule:
    mask = THROTTLE_MASK
    current = staleness.current

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        for st in view.nodes():
            if not st.clock_reasons_any & mask:
                continue
            sample = current(st, now)
            if sample is None:
                continue
            for g in sample.gpus:
                bits = (g.clock_event_reasons or 0) & mask
                if bits:
                    names = ",".join(n for b, n in CLOCK_EVENT_NAMES.items() if bits & b)
                    yield Instance(_gpu_labels(st, g.index, g.uuid), {"reasons": names})

    return Rule(
        name=BUILTIN.GpuClockThrottled,
        severity="warning",
        summary="GPU {gpu} on {node} clocks held down: {reasons}",
        description=(
            "GPU {gpu} ({uuid}) on {node} has run with lowered clocks for thermal or "
            "power-brake reasons ({reasons}, NVML clock event reasons) for a sustained period."
        ),
        condition=condition,
        for_s=s.throttle_for_s,
        keep_firing_for_s=s.throttle_keep_firing_for_s,
    )


# -- ingest rules


def _node_clock_skew(s: AlertSettings) -> Rule:
    window = s.clock_skew_window_s

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        recent = now - window - view.reject_bucket_s
        for st in view.nodes():
            if st.last_reject is None or st.last_reject < recent:
                continue
            n = view.rejects(st, now, window, "clock_skew")
            if n:
                yield _counted(st, n)

    return Rule(
        name=BUILTIN.NodeClockSkew,
        severity="warning",
        summary="{node}'s clock is ahead of the collector's",
        description=(
            f"{{count}} samples from {{node}} in the last {window:g} s were stamped too far in "
            "the future and rejected (clock_skew): fix NTP/chrony on the node."
        ),
        condition=condition,
        keep_firing_for_s=s.clock_skew_keep_firing_for_s,
    )


def _node_rejects_rising(s: AlertSettings) -> Rule:
    window = s.rejects_window_s
    least = s.rejects_min

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        recent = now - window - view.reject_bucket_s
        for st in view.nodes():
            if st.last_reject is None or st.last_reject < recent:
                continue
            n = view.rejects(st, now, window)
            if n >= least:
                yield _counted(st, n)

    return Rule(
        name=BUILTIN.NodeRejectsRising,
        severity="warning",
        summary=f"{{count}} messages from {{node}} rejected in {window:g} s",
        description=(
            f"The collector rejected {{count}} messages from {{node}} in the last {window:g} s "
            f"(threshold {least}): `collector query --rejected` shows them and why."
        ),
        condition=condition,
        keep_firing_for_s=s.rejects_keep_firing_for_s,
    )


def _node_samples_missing(s: AlertSettings) -> Rule:
    """Reads the live view's gaps: in a share group those of the leader's live feed only,
    each node counted from its first feed sample of the term (:mod:`collector.live`), so a
    takeover fires nothing for the samples a member's session still holds."""
    window = s.samples_missing_window_s
    least = s.samples_missing_min

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        since = now - window
        for st in view.nodes():
            gaps = st.gaps
            if not gaps or gaps[-1].received < since:
                continue
            n = view.missing_since(st, since)
            if n >= least:
                yield _counted(st, n)

    return Rule(
        name=BUILTIN.NodeSamplesMissing,
        severity="warning",
        summary=f"{{count}} samples of {{node}} missing in {window:g} s",
        description=(
            f"{{node}} numbered {{count}} samples in the last {window:g} s that never arrived "
            "(a jump in seq within one agent epoch: its spool overflowed, its disk failed, "
            "or the broker lost them): `collector query --node {node} --gaps` lists them."
        ),
        condition=condition,
        keep_firing_for_s=s.samples_missing_keep_firing_for_s,
    )


def _node_agent_conflict(s: AlertSettings) -> Rule:
    """Reads the samples the live view counted as a second agent's (:mod:`collector.live`:
    two runs alternating, or one epoch's ``seq`` going back while its time goes on)."""
    window = s.agent_conflict_window_s
    least = s.agent_conflict_min

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        since = now - window
        enough = min(least, view.max_conflicts)
        for st in view.nodes():
            seen = st.conflicts  # mostly empty: one test per healthy node
            if seen and seen[-1] >= since and (n := view.conflicts_since(st, since)) >= enough:
                yield _counted(st, n)

    return Rule(
        name=BUILTIN.NodeAgentConflict,
        severity="warning",
        summary="More than one agent publishes as {node}",
        description=(
            f"At least {{count}} samples of {{node}} in the last {window:g} s came from a "
            "second agent (the node's samples alternate between two agent runs, or repeat "
            "seq numbers with newer times): two machines run the agent with node_id {node}, "
            "a cloned VM or a copied agent config. Meanwhile its newest sample, and so its "
            "capacity, usage and alerts, is whichever came last, and the two agents knock "
            "each other off the broker (one MQTT client id). Confirm with `collector query "
            "--node {node}` (SEQ goes back and forth, or repeats), find the hosts in the "
            "broker's log (client capwatch-agent-{node} connecting from two addresses), and "
            "give each its own node_id."
        ),
        condition=condition,
        keep_firing_for_s=s.agent_conflict_keep_firing_for_s,
    )


# -- job rules


def _job_gpu_idle(s: AlertSettings, staleness: Staleness) -> Rule:
    limit = s.job_idle_util_pct
    current = staleness.current

    def condition(view: LiveView, now: float) -> Iterator[Instance]:
        for st in view.nodes():
            least = st.min_util_pct
            if least is None or least >= limit:
                continue  # every GPU busy: no idle job here
            sample = current(st, now)
            if sample is None or not sample.jobs:
                continue
            for j in jobs_on(sample):
                if j.util_pct and max(j.util_pct) < limit:
                    yield Instance(
                        {"node": st.node, "job": j.label, "user": j.user},
                        {
                            "gpus": ",".join(map(str, j.gpus)),
                            "util_pct": f"{max(j.util_pct):.1f}",
                        },
                    )

    return Rule(
        name=BUILTIN.JobGpuIdle,
        severity="warning",
        summary="Job {job} of {user} idles GPUs {gpus} on {node}",
        description=(
            "Job {job} (user {user}) holds GPUs {gpus} on {node}, none above "
            f"{{util_pct}} % utilisation (threshold {limit:g} %) for "
            f"{s.job_idle_for_s / 60:g} min: it reserves GPUs it does not use."
        ),
        condition=condition,
        for_s=s.job_idle_for_s,
    )
