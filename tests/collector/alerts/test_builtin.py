"""Each built-in rule fires on hand-built samples, statuses and rejects, and clears again."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import pytest

from collector.alerts.builtin import HW_POWER_BRAKE_SLOWDOWN, HW_THERMAL_SLOWDOWN, builtin_rules
from collector.alerts.evaluator import Evaluator, Transition
from collector.alerts.settings import CRITICAL_XIDS, AlertSettings
from collector.live import LiveView
from collector.nodefacts import Staleness
from shared.clock import FakeClock
from shared.schema import MAX_GPUS, Sample
from tests.shared.wire_samples import sample_dict, uuid

NODE = "x1000c0s0b0n0"


class Fleet:
    """A live view, the built-in rules and a fake clock, driven like the collector drives them."""

    def __init__(self, settings: AlertSettings | None = None) -> None:
        self.clock = FakeClock()
        self.view = LiveView()
        self.ev = Evaluator(builtin_rules(settings))
        self.seq = 0
        self.log: list[Transition] = []

    def sample(self, **changes: Any) -> Sample:
        """Store a sample now: the realistic wire sample, healthy, with ``changes`` applied.

        ``gpuN=dict`` updates GPU N's fields; other keys replace top-level fields.
        """
        d = sample_dict()
        d["xids"] = []
        for g in d["gpus"]:  # a healthy, busy GPU with the power cap at work (0x4)
            g["temp_c"] = 68.0
        for key, value in changes.items():
            if key.startswith("gpu") and key[3:].isdigit():
                d["gpus"][int(key[3:])].update(value)
            else:
                d[key] = value
        self.seq += 1
        d["ts"] = self.clock.time()
        d["seq"] = self.seq
        s = msgspec.convert(d, Sample)
        self.view.on_sample(s, self.clock.time())
        return s

    def step(self, seconds: float = 5.0) -> list[Transition]:
        """Advance the clock and run one evaluation."""
        self.clock.advance(seconds)
        out = self.ev.evaluate(self.view, self.clock.time())
        self.log += out
        return out

    def firing(self, name: str) -> list[dict[str, str]]:
        """Label sets of the firing alerts of rule ``name``."""
        return [dict(s.labels) for s in self.ev.states() if s.rule == name and s.state == "firing"]

    def run(self, seconds: float, **changes: Any) -> None:
        """Keep sending the same sample every 5 s for ``seconds``, evaluating after each."""
        for _ in range(int(seconds // 5)):
            self.sample(**changes)
            self.step()


def test_node_offline_fires_after_its_for_and_clears_five_minutes_after_online() -> None:
    """A last will (offline) held for 30 s fires NodeOffline; online again resolves it
    ``offline_keep_firing_for_s`` (5 min) after the first evaluation that saw it online."""
    f = Fleet()
    f.sample()
    f.view.on_status(NODE, "offline", f.clock.time())
    f.step(0)  # `for` counts from the first evaluation that sees the condition
    f.step(25)
    assert f.firing("NodeOffline") == []
    f.step(5)
    assert f.firing("NodeOffline") == [
        {"alertname": "NodeOffline", "severity": "critical", "node": NODE}
    ]
    assert f.firing("NodeStale") == []  # offline is not also stale
    f.view.on_status(NODE, "online", f.clock.time())
    f.sample()  # back: the agent says online and sends
    assert f.step() == []
    f.run(295)
    assert len(f.firing("NodeOffline")) == 1
    f.sample()
    changes = f.step()
    assert [(t.rule, t.state) for t in changes] == [("NodeOffline", "resolved")]


def test_node_stale_fires_after_three_intervals_and_clears_a_minute_after_a_sample() -> None:
    """No sample for 3 x 5 s fires NodeStale; samples again resolve it after
    ``stale_keep_firing_for_s`` (60 s)."""
    f = Fleet()
    f.view.on_status(NODE, "online", f.clock.time())
    f.sample()
    f.step(15)
    assert f.firing("NodeStale") == []
    f.step(1)
    (alert,) = f.firing("NodeStale")
    assert alert["node"] == NODE
    f.sample()
    assert f.step(1) == []  # fresh from here: the countdown starts
    for _ in range(11):  # 55 s of samples
        f.sample()
        assert f.step() == []
    f.sample()
    assert [(t.rule, t.state) for t in f.step()] == [("NodeStale", "resolved")]


def test_gpu_temperature_fires_per_gpu_after_for_and_clears_after_cooling() -> None:
    """GPU 2 at 90 °C for 60 s fires with node, gpu and uuid labels; cooling resolves it."""
    f = Fleet()
    f.run(60, gpu2={"temp_c": 90.0})  # first seen at the first evaluation, 5 s in
    assert f.firing("GpuTemperature") == []
    assert [s.state for s in f.ev.states()] == ["pending"]
    f.run(5, gpu2={"temp_c": 90.0})
    assert f.firing("GpuTemperature") == [
        {
            "alertname": "GpuTemperature",
            "severity": "warning",
            "node": NODE,
            "gpu": "2",
            "uuid": uuid(2),
        }
    ]
    (st,) = f.ev.states()
    assert st.annotations["summary"] == f"GPU 2 on {NODE} at 90 °C"
    f.run(60)  # keep_firing_for 60 s, counted from the first evaluation without it
    assert len(f.firing("GpuTemperature")) == 1
    f.run(5)
    assert f.firing("GpuTemperature") == []
    assert [(t.previous, t.state) for t in f.log] == [
        ("inactive", "pending"),
        ("pending", "firing"),
        ("firing", "resolved"),
    ]


def test_gpu_temperature_threshold_is_configurable_and_inclusive() -> None:
    """A threshold of 68 °C makes the realistic sample's GPUs (at 68 °C) fire."""
    f = Fleet(AlertSettings(gpu_temp_c=68.0, gpu_temp_for_s=0))
    f.run(5)
    assert len(f.firing("GpuTemperature")) == 8


def test_gpu_xid_fires_on_a_critical_xid_and_keeps_firing_after_the_sample() -> None:
    """XID 79 fires at once; later samples without it keep it firing for keep_firing_for."""
    f = Fleet(AlertSettings(xid_window_s=30, xid_keep_firing_for_s=120))
    f.sample(xids=[{"gpu_index": 3, "xid": 79, "ts": f.clock.time() - 1}])
    f.step()
    assert f.firing("GpuXid") == [
        {
            "alertname": "GpuXid",
            "severity": "critical",
            "node": NODE,
            "gpu": "3",
            "uuid": uuid(3),
        }
    ]
    (st,) = f.ev.states()
    assert st.values == {"xid": "79", "meaning": CRITICAL_XIDS[79]}
    assert st.annotations["summary"] == f"XID 79 on GPU 3 of {NODE}: {CRITICAL_XIDS[79]}"
    f.run(145)  # 30 s window, then 120 s kept firing
    assert f.firing("GpuXid") != []
    f.run(5)
    assert f.firing("GpuXid") == []
    assert [t.state for t in f.log] == ["firing", "resolved"]


@pytest.mark.parametrize("n_gpus", [9, 16, MAX_GPUS])
def test_gpu_xid_is_one_alert_per_gpu_whatever_its_gpus_and_codes(n_gpus: int) -> None:
    """Every GPU of a node past 8 GPUs reporting every critical code (8 of them: 9 x 8 > the
    per-node bound of 64) gets its alert, naming its codes; none is dropped."""
    f = Fleet()
    d = sample_dict()
    d["gpus"] = [{**d["gpus"][0], "index": i, "uuid": uuid(i), "mig": []} for i in range(n_gpus)]
    now = f.clock.time()
    d["xids"] = [
        {"gpu_index": i, "xid": x, "ts": now} for i in range(n_gpus) for x in CRITICAL_XIDS
    ]
    f.seq += 1
    d["ts"], d["seq"] = now, f.seq
    f.view.on_sample(msgspec.convert(d, Sample), now)
    f.step()
    firing = sorted(
        (s for s in f.ev.states() if s.rule == "GpuXid"), key=lambda s: int(s.labels["gpu"])
    )
    assert [s.labels["gpu"] for s in firing] == [str(i) for i in range(n_gpus)]
    codes = ", ".join(map(str, sorted(CRITICAL_XIDS)))
    assert {s.values["xid"] for s in firing} == {codes}
    assert f.ev.metrics.counter_rows()["alert_instances_dropped"] == 0


def test_application_xids_are_not_alerts() -> None:
    """XIDs 13, 31 and 43 are the job's fault, not the GPU's: no alert."""
    f = Fleet()
    now = f.clock.time()
    f.sample(xids=[{"gpu_index": 0, "xid": x, "ts": now} for x in (13, 31, 43)])
    f.step()
    assert f.ev.states() == []


def test_gpu_ecc_uncorrectable_fires_and_survives_fast_ticks_until_cleared() -> None:
    """Uncorrected ECC on GPU 5 fires; fast ticks without ECC keep it; zero again resolves
    it ``ecc_keep_firing_for_s`` later (0 here: at once)."""
    f = Fleet(AlertSettings(ecc_keep_firing_for_s=0))
    f.sample(gpu5={"ecc": {"uncorrected_volatile": 2, "corrected_volatile": 0}})
    f.step()
    (alert,) = f.firing("GpuEccUncorrectable")
    assert (alert["gpu"], alert["uuid"], alert["severity"]) == ("5", uuid(5), "critical")
    f.run(30, gpu5={"ecc": None})  # fast ticks carry no ECC block
    assert len(f.firing("GpuEccUncorrectable")) == 1
    f.sample(gpu5={"ecc": {"uncorrected_volatile": 0}})  # driver reloaded
    assert [(t.rule, t.state) for t in f.step()] == [("GpuEccUncorrectable", "resolved")]


def test_gpu_row_remap_fires_on_pending_or_failure_and_clears() -> None:
    """A pending remap on GPU 1 and a failure on GPU 6 are two alerts; a reset clears them
    (``ecc_keep_firing_for_s`` 0 here: at once)."""
    f = Fleet(AlertSettings(ecc_keep_firing_for_s=0))
    f.sample(
        gpu1={
            "remapped_rows": {
                "correctable": 1,
                "uncorrectable": 1,
                "pending": True,
                "failure": False,
            }
        },
        gpu6={
            "remapped_rows": {
                "correctable": 0,
                "uncorrectable": 9,
                "pending": False,
                "failure": True,
            }
        },
    )
    f.step()
    alerts = sorted(f.firing("GpuRowRemap"), key=lambda a: a["gpu"])
    assert [(a["gpu"], a["uuid"]) for a in alerts] == [("1", uuid(1)), ("6", uuid(6))]
    summaries = sorted(s.annotations["summary"] for s in f.ev.states())
    assert summaries == [
        f"Row remapping failure on GPU 6 of {NODE}",
        f"Row remapping pending on GPU 1 of {NODE}",
    ]
    ok = {"correctable": 1, "uncorrectable": 1, "pending": False, "failure": False}
    f.sample(gpu1={"remapped_rows": ok}, gpu6={"remapped_rows": ok})
    assert sorted(t.state for t in f.step()) == ["resolved", "resolved"]


def test_gpu_clock_throttled_needs_a_sustained_thermal_or_brake_reason() -> None:
    """HW thermal slowdown for 120 s fires; the SW power cap alone (0x4) never does."""
    f = Fleet()
    f.run(300)  # the realistic sample has 0x4 (SW power cap) on every GPU
    assert f.ev.states() == []
    f.run(120, gpu4={"clock_event_reasons": 0x4 | HW_THERMAL_SLOWDOWN})  # held 115 s
    assert f.firing("GpuClockThrottled") == []
    f.run(5, gpu4={"clock_event_reasons": 0x4 | HW_THERMAL_SLOWDOWN | HW_POWER_BRAKE_SLOWDOWN})
    (alert,) = f.firing("GpuClockThrottled")
    assert (alert["gpu"], alert["uuid"]) == ("4", uuid(4))
    (st,) = f.ev.states()
    assert st.annotations["summary"].endswith("hw_thermal,hw_power_brake")
    f.run(65)  # keep_firing_for 60 s
    assert f.firing("GpuClockThrottled") == []


def test_stale_node_does_not_keep_its_last_temperature_alert() -> None:
    """A hot GPU whose node stopped sending resolves; NodeStale says why."""
    f = Fleet(AlertSettings(gpu_temp_for_s=0, gpu_temp_keep_firing_for_s=0))
    f.view.on_status(NODE, "online", f.clock.time())
    f.sample(gpu0={"temp_c": 99.0})
    f.step()
    assert len(f.firing("GpuTemperature")) == 1
    f.step(20)
    assert f.firing("GpuTemperature") == []
    assert len(f.firing("NodeStale")) == 1


def test_node_clock_skew_fires_on_clock_skew_rejects_only() -> None:
    """clock_skew rejects fire NodeClockSkew; other reasons do not; it clears after the window."""
    f = Fleet(AlertSettings(clock_skew_window_s=60, clock_skew_keep_firing_for_s=60))
    f.view.on_reject(NODE, "invalid", f.clock.time())
    f.step()
    assert f.ev.states() == []
    f.view.on_reject(NODE, "clock_skew", f.clock.time())
    f.step()
    assert f.firing("NodeClockSkew") == [
        {"alertname": "NodeClockSkew", "severity": "warning", "node": NODE}
    ]
    for _ in range(30):  # 150 s: past the 60 s window (+ one bucket) and 60 s kept firing
        f.step()
    assert [t.state for t in f.log] == ["firing", "resolved"]


def test_node_rejects_rising_fires_at_the_threshold_and_clears() -> None:
    """9 rejects in the window are not enough, the 10th fires; quiet for long enough clears."""
    f = Fleet(AlertSettings(rejects_window_s=60, rejects_min=10, rejects_keep_firing_for_s=0))
    for _ in range(9):
        f.view.on_reject(NODE, "invalid", f.clock.time())
    f.step()
    assert f.firing("NodeRejectsRising") == []
    f.view.on_reject(NODE, "not_json", f.clock.time())
    f.step()
    (st,) = f.ev.states()
    assert st.annotations["summary"] == f"10 messages from {NODE} rejected in 60 s"
    for _ in range(16):
        f.step()
    assert f.firing("NodeRejectsRising") == []


def _agent_sample(f: Fleet, node: str, epoch: int, seq: int) -> None:
    """One healthy sample of ``node`` from the agent run ``epoch``, stamped now."""
    d = sample_dict()
    d.update(xids=[], node=node, epoch=epoch, seq=seq, ts=f.clock.time())
    f.view.on_sample(msgspec.convert(d, Sample), f.clock.time())


def test_node_agent_conflict_fires_for_the_node_two_agents_publish_as_and_no_other() -> None:
    """Two agents (epochs 5 and 0) publish as NODE, every 5 s each, 2.5 s apart; one agent
    publishes as another node and restarts once. NodeAgentConflict fires for NODE at the
    third sample that shows the second agent (the first switch looks like a restart), and
    for nothing else; once the second agent is gone it resolves its window plus
    ``keep_firing_for`` later."""
    other = "x1000c0s0b0n1"
    f = Fleet(AlertSettings(agent_conflict_window_s=60, agent_conflict_keep_firing_for_s=30))
    for i in range(8):
        k = i // 2
        if i % 2:
            _agent_sample(f, NODE, 0, k)
        else:
            _agent_sample(f, NODE, 5, 700 + k)
            _agent_sample(f, other, 3 if k > 1 else 2, k)  # restarted at k = 2
        f.step(2.5)
        assert len(f.firing("NodeAgentConflict")) == (i >= 4), i
    assert f.firing("NodeAgentConflict") == [
        {"alertname": "NodeAgentConflict", "severity": "warning", "node": NODE}
    ]
    (st,) = f.ev.states()
    assert st.annotations["summary"] == f"More than one agent publishes as {NODE}"
    assert f"collector query --node {NODE}" in st.annotations["description"]
    assert st.annotations["description"].startswith(f"At least 6 samples of {NODE} in the last")
    for k in range(4, 22):  # the second agent gone: 90 s of the first alone
        _agent_sample(f, NODE, 5, 700 + k)
        _agent_sample(f, other, 3, k)
        f.step()
        if k < 18:
            assert len(f.firing("NodeAgentConflict")) == 1, k
    assert f.firing("NodeAgentConflict") == []
    assert [(t.rule, t.state) for t in f.log] == [
        ("NodeAgentConflict", "firing"),
        ("NodeAgentConflict", "resolved"),
    ]


def test_builtin_rules_are_distinct_and_can_be_disabled() -> None:
    """Twelve rules with distinct names and valid severities; ``disabled`` leaves one out."""
    names = [r.name for r in builtin_rules()]
    assert names == [
        "NodeOffline",
        "NodeStale",
        "GpuTemperature",
        "GpuXid",
        "GpuEccUncorrectable",
        "GpuRowRemap",
        "GpuClockThrottled",
        "NodeClockSkew",
        "NodeRejectsRising",
        "NodeSamplesMissing",
        "NodeAgentConflict",
        "JobGpuIdle",
    ]
    rules = builtin_rules(AlertSettings(disabled=["GpuXid"]))
    assert "GpuXid" not in [r.name for r in rules]
    assert all(r.summary and r.description for r in rules)


def test_healthy_node_raises_nothing() -> None:
    """The realistic sample, online, for ten minutes: no rule is even pending."""
    f = Fleet()
    f.view.on_status(NODE, "online", f.clock.time())
    f.run(600)
    assert f.ev.states() == []
    assert f.log == []


_IDLE = {f"gpu{g}": {"util_pct": 2.0} for g in range(6)}  # the Slurm job's six GPUs


def test_job_gpu_idle_fires_after_30_minutes_labelled_with_job_and_user() -> None:
    """Job 4242 holds GPUs 0-5 at 2 % for 30 minutes: JobGpuIdle for it, not for the pod
    busy on GPUs 6-7."""
    f = Fleet()
    f.run(1795, **_IDLE)
    assert f.firing("JobGpuIdle") == []
    f.run(10, **_IDLE)
    assert f.firing("JobGpuIdle") == [
        {
            "alertname": "JobGpuIdle",
            "severity": "warning",
            "node": NODE,
            "job": "4242",
            "user": "alice",
        }
    ]
    (state,) = [a for a in f.ev.states() if a.rule == "JobGpuIdle"]
    assert "GPUs 0,1,2,3,4,5" in state.annotations["description"]
    f.run(10)  # busy again
    assert f.firing("JobGpuIdle") == []


def test_job_gpu_idle_needs_every_gpu_of_the_job_idle() -> None:
    """One of the job's six GPUs at 50 %: the job uses its GPUs; an idle pod is named by
    namespace/pod."""
    f = Fleet()
    pod_idle = {"gpu6": {"util_pct": 0.0}, "gpu7": {"util_pct": 1.0}}
    f.run(1900, **{**_IDLE, "gpu3": {"util_pct": 50.0}}, **pod_idle)
    assert [a["job"] for a in f.firing("JobGpuIdle")] == ["ml-team/trainer-7f9c"]


@pytest.mark.parametrize("interval_s", [0.25, 1.0, 5.0, 60.0])
def test_node_stale_fires_exactly_when_the_node_is_stale(interval_s: float) -> None:
    """:meth:`Staleness.stale_among`, and so NodeStale's instances, are the nodes
    :meth:`Staleness.of` calls stale, to the edge of each node's limit (it skips the fresh
    ones by the least limit any node has: a node past that one but inside its own is not
    stale), online or offline, sampled or not."""
    staleness = Staleness(intervals=3.0, min_interval_s=1.0)
    (rule,) = [r for r in builtin_rules(staleness=staleness) if r.name == "NodeStale"]
    view = LiveView()
    t0 = 1_800_000_000.0
    d = sample_dict()
    d["interval_s"] = interval_s
    statuses: list[Literal["online", "offline"] | None] = ["online", "offline", None]
    for i, status in enumerate(statuses):
        node = f"n{i}"
        d["node"], d["ts"] = node, t0
        view.on_sample(msgspec.convert(d, Sample), t0)
        if status is not None:
            view.on_status(node, status, t0)
    view.on_status("never-sampled", "online", t0)
    limit = staleness.limit_s(interval_s)
    edges = (staleness.least_limit_s, limit)  # the least limit any node has, the node's own
    assert staleness.least_limit_s == 3.0  # 3 x min_interval_s
    for age in sorted({0.0, 4 * limit, *(e + x for e in edges for x in (-1e-4, 0.0, 1e-4))}):
        now = t0 + age
        want = sorted(st.node for st in view.nodes() if staleness.of(st, now) == "stale")
        assert sorted(st.node for st in staleness.stale_among(view.nodes(), now)) == want, age
        got = sorted(inst.labels["node"] for inst in rule.condition(view, now))
        assert got == want, age
