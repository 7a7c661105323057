"""``[alerts]``: when the built-in rules fire; the only place their defaults live.

:func:`collector.alerts.builtin.builtin_rules` takes this model as it is: no second copy of
the thresholds to keep equal. ``collector rules`` lists the rules and the values in force.

**Flapping.** Every rule whose condition a node sets sample by sample has a ``for`` or a
``keep_firing_for`` of a minute or more (Prometheus 2.42+: "how long an alert will continue
firing after the condition has occurred"; the condition coming back inside it cancels the
countdown, :mod:`collector.alerts.evaluator`), so one alert makes at most one fire/resolve pair per
``for`` + ``keep_firing_for``, whatever a node flips and however fast: ``NodeStale`` 1 min,
``GpuTemperature`` 2 min, ``GpuClockThrottled`` 3 min, ``NodeClockSkew``,
``NodeRejectsRising`` and ``NodeAgentConflict`` 5 min (after their window), ``GpuXid``,
``GpuEccUncorrectable`` and ``GpuRowRemap`` 15 min, ``NodeSamplesMissing`` its 15 min window,
``JobGpuIdle`` its 30 min ``for``, ``NodeOffline`` 5 min after its 30 s ``for``: a node whose
status toggles (an agent or a broker link that keeps dropping) is one alert, not a pair per
31 s. While it is only kept firing (the node is back) it mutes nothing: an alert inhibits only
while its condition holds (:mod:`collector.alerts.silence`), so the node's other alerts notify
as soon as it is back.
"""

from __future__ import annotations

from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collector.alerts import names
from collector.nodefacts import DEFAULT_EVAL_INTERVAL_S

__all__ = ["CRITICAL_XIDS", "AlertSettings"]

_DAY_S: Final = 86_400.0

CRITICAL_XIDS: Final = {
    48: "double-bit ECC error",
    63: "row remapping recorded (ECC page retirement)",
    64: "row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
}
"""XIDs that mean hardware trouble (NVIDIA's XID catalogue), the default of ``xid_codes``.
Application faults such as 13 (graphics engine exception), 31 (MMU fault) and 43 (GPU
stopped processing) are the job's problem, not the hardware's, and are not alerts."""


class AlertSettings(BaseModel):
    """``[alerts]``: thresholds, ``for`` and ``keep_firing_for`` of the built-in rules (see
    ``collector rules`` for all of them); every field has a working default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    eval_interval_s: float = Field(default=DEFAULT_EVAL_INTERVAL_S, ge=0.5, le=3600)
    """How often the rules are evaluated on the live view. Every second: a breach reaches a
    receiver within about a second plus its route's ``group_wait``; a cycle costs a few ms
    at 12,500 nodes (``bench/bench_alerts.py``). Also the shortest sample interval a node is
    believed (a node claiming less is stale after ``stale_intervals`` x this)."""
    offline_for_s: float = Field(default=30.0, ge=0, le=_DAY_S)
    """An agent restarting says offline then online within seconds: do not page for that."""
    offline_keep_firing_for_s: float = Field(default=300.0, ge=0, le=_DAY_S)
    """``NodeOffline`` resolves once the node has been back (online) this long (5 min): a node
    whose status toggles is one alert, not a fire/resolve pair per ``offline_for_s``. Kept
    firing, it no longer mutes the node's other alerts (the default inhibit rule): those
    notify as soon as the node is back."""
    stale_intervals: float | None = Field(default=None, gt=0, le=1000)
    """Replaced by the top-level ``stale_intervals`` (one answer for every consumer); still
    read, with a warning: it stands for the top-level key when that one is not given."""
    stale_for_s: float = Field(default=0.0, ge=0, le=_DAY_S)
    """``NodeStale`` fires as soon as a node is stale (that is already 3 of its intervals)..."""
    stale_keep_firing_for_s: float = Field(default=60.0, ge=0, le=_DAY_S)
    """...and resolves a minute after its samples are back (12 default intervals): a node
    whose samples come in bursts with gaps past 3 intervals is one alert, not a pair per gap."""
    gpu_temp_c: float = Field(default=85.0, ge=20, le=150)
    gpu_temp_for_s: float = Field(default=60.0, ge=0, le=_DAY_S)
    gpu_temp_keep_firing_for_s: float = Field(default=60.0, ge=0, le=_DAY_S)
    xid_codes: list[int] = Field(default_factory=lambda: sorted(CRITICAL_XIDS), max_length=256)
    """XIDs that fire ``GpuXid`` (default: :data:`CRITICAL_XIDS`)."""
    xid_window_s: float = Field(default=60.0, gt=0, le=_DAY_S)
    """An XID counts while its sample arrived within this window..."""
    xid_keep_firing_for_s: float = Field(default=900.0, ge=0, le=_DAY_S)
    """...and the alert keeps firing this long after: an XID is an event, not a state."""
    throttle_for_s: float = Field(default=120.0, ge=0, le=_DAY_S)
    throttle_keep_firing_for_s: float = Field(default=60.0, ge=0, le=_DAY_S)
    ecc_keep_firing_for_s: float = Field(default=900.0, ge=0, le=_DAY_S)
    """``GpuEccUncorrectable`` and ``GpuRowRemap`` keep firing this long (15 min) after the
    count is back to 0 (pending or failure cleared). On a real GPU the volatile count only
    grows until the driver reloads and a pending remap stays until the GPU is reset, so a
    node toggling them sample by sample makes one alert, not a pair per sample."""
    clock_skew_window_s: float = Field(default=60.0, gt=0, le=_DAY_S)
    clock_skew_keep_firing_for_s: float = Field(default=300.0, ge=0, le=_DAY_S)
    rejects_window_s: float = Field(default=300.0, gt=0, le=_DAY_S)
    rejects_min: int = Field(default=10, ge=1)
    """Rejects of any reason in ``rejects_window_s`` that count as rising."""
    rejects_keep_firing_for_s: float = Field(default=300.0, ge=0, le=_DAY_S)
    samples_missing_window_s: float = Field(default=900.0, gt=0, le=_DAY_S)
    samples_missing_min: int = Field(default=1, ge=1)
    """Samples missing (gaps in a node's ``seq`` within one agent epoch) in
    ``samples_missing_window_s`` that fire ``NodeSamplesMissing``: any, by default, since an
    agent with its spool loses none unless its spool overflowed or its disk failed."""
    samples_missing_keep_firing_for_s: float = Field(default=0.0, ge=0, le=_DAY_S)
    agent_conflict_window_s: float = Field(default=300.0, gt=0, le=_DAY_S)
    agent_conflict_min: int = Field(default=3, ge=1)
    """Samples of a node that showed a second agent publishing as it (:mod:`collector.live`)
    in ``agent_conflict_window_s`` that fire ``NodeAgentConflict``: two agents show it at
    nearly every sample; one agent whose clock was set back between two runs may show it
    once or twice. The live view keeps a node's last few
    (:attr:`collector.live.LiveView.max_conflicts`): a higher value counts as that many."""
    agent_conflict_keep_firing_for_s: float = Field(default=300.0, ge=0, le=_DAY_S)
    job_idle_util_pct: float = Field(default=5.0, gt=0, le=100)
    """``JobGpuIdle``: a job whose every GPU is below this utilisation..."""
    job_idle_for_s: float = Field(default=1800.0, ge=0, le=7 * _DAY_S)
    """...for this long (30 min) holds GPUs it does not use."""
    disabled: list[str] = Field(default=[], max_length=64)
    """Built-in rules to leave out, by name (e.g. ["NodeRejectsRising"]; the names:
    :data:`collector.alerts.names.BUILTIN`)."""
    external_url: str = Field(default="", max_length=1024, pattern=r"^(https?://\S+)?$")
    """Where people reach this collector: ``externalURL`` and ``generatorURL`` in webhooks."""

    @model_validator(mode="after")
    def _disabled_rules_exist(self) -> Self:
        names.refuse_unknown(self.disabled, names.BUILTIN, field="alerts.disabled")
        return self
