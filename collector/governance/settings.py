"""``[governance]``: thresholds of the lease and quota rules (see ``collector rules``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ConfigError
from shared.schema import MAX_GPU_POWER_W

if TYPE_CHECKING:
    from collector.governance.rules import GovernanceRuleSettings

__all__ = ["GovernanceSettings"]

_DAY_S: Final = 86_400.0


class GovernanceSettings(BaseModel):
    """Defaults equal :class:`collector.governance.rules.GovernanceRuleSettings`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    eval_interval_s: float = Field(default=15.0, ge=0.5, le=3600)
    """How often usage is recomputed from the live view (a pass over every leased node:
    ~0.2 s for 12,500 on a small machine); the rules read the last result."""
    lease_end_days: int = Field(default=30, ge=0, le=3650)
    notice_deadline_days: int = Field(default=14, ge=0, le=3650)
    busy_util_pct: float = Field(default=10.0, ge=0, le=100)
    """Measured basis: a GPU at or above this utilisation is busy."""
    idle_gpu_w: float = Field(default=100.0, ge=0, le=MAX_GPU_POWER_W)
    expired_in_use_for_s: float = Field(default=300.0, ge=0, le=30 * _DAY_S)
    idle_util_pct: float = Field(default=10.0, ge=0, le=100)
    idle_for_s: float = Field(default=6 * 3600.0, ge=0, le=30 * _DAY_S)
    high_pct: float = Field(default=90.0, gt=0, le=100)
    quota_for_s: float = Field(default=300.0, ge=0, le=30 * _DAY_S)
    disabled: list[str] = Field(default=[], max_length=16)
    """Governance rules to leave out, by name (e.g. ["LeasedGpusIdle"])."""

    def rules(self) -> GovernanceRuleSettings:
        """The rules' thresholds; an unknown rule name in ``disabled`` is refused."""
        from collector.governance.job import GovernanceView  # noqa: PLC0415
        from collector.governance.rules import (  # noqa: PLC0415
            GovernanceRuleSettings,
            governance_rules,
        )

        known = {r.name for r in governance_rules(GovernanceView)}
        unknown = sorted(set(self.disabled) - known)
        if unknown:
            raise ConfigError(
                f"setting 'governance.disabled' names unknown rules {unknown}: use "
                f"{', '.join(sorted(known))}",
                field="governance.disabled",
            )
        values = self.model_dump(exclude={"eval_interval_s"})
        values["disabled"] = frozenset(self.disabled)
        return GovernanceRuleSettings(**values)
