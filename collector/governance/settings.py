"""``[governance]``: thresholds of the lease and quota rules (see ``collector rules``); the
only place their defaults live: :func:`collector.governance.rules.governance_rules` takes
this model as it is."""

from __future__ import annotations

from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collector.alerts import names
from collector.nodefacts import DEFAULT_BUSY_UTIL_PCT
from shared.schema import MAX_GPU_POWER_W

__all__ = ["GovernanceSettings"]

_DAY_S: Final = 86_400.0


class GovernanceSettings(BaseModel):
    """``[governance]``: how often usage is recomputed, and when the governance rules fire;
    every field has a working default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    eval_interval_s: float = Field(default=15.0, ge=0.5, le=3600)
    """How often usage is recomputed from the live view (a pass over every leased node:
    ~0.2 s for 12,500 on a small machine); the rules read the last result."""
    lease_end_days: int = Field(default=30, ge=0, le=3650)
    notice_deadline_days: int = Field(default=14, ge=0, le=3650)
    busy_util_pct: float = Field(default=DEFAULT_BUSY_UTIL_PCT, ge=0, le=100)
    """Measured basis: a GPU at or above this utilisation is busy."""
    idle_gpu_w: float = Field(default=100.0, ge=0, le=MAX_GPU_POWER_W)
    """A GPU drawing more than this is working, whatever its utilisation says."""
    expired_in_use_for_s: float = Field(default=300.0, ge=0, le=30 * _DAY_S)
    idle_util_pct: float = Field(default=10.0, ge=0, le=100)
    idle_for_s: float = Field(default=6 * 3600.0, ge=0, le=30 * _DAY_S)
    high_pct: float = Field(default=90.0, gt=0, le=100)
    quota_for_s: float = Field(default=300.0, ge=0, le=30 * _DAY_S)
    disabled: list[str] = Field(default=[], max_length=16)
    """Governance rules to leave out, by name (e.g. ["LeasedGpusIdle"]; the names:
    :data:`collector.alerts.names.GOVERNANCE`)."""

    @model_validator(mode="after")
    def _disabled_rules_exist(self) -> Self:
        names.refuse_unknown(self.disabled, names.GOVERNANCE, field="governance.disabled")
        return self
