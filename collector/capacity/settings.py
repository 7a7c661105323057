"""``[capacity]``: live headroom under the site's cap; the only place its defaults live.

:func:`collector.capacity.rules.capacity_rules` takes this model as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collector.alerts import names
from collector.capacity.picture import (
    DEFAULT_REST_BASIS,
    DEFAULT_STALE_BASIS,
    RestBasis,
    StaleBasis,
)
from shared.errors import ConfigError

__all__ = ["CapacitySettings"]

_DAY_S: Final = 86_400.0
_TEN_YEARS_S: Final = 10 * 365.25 * _DAY_S


class CapacitySettings(BaseModel):
    """``[capacity]``: live headroom under the site's cap (off unless ``plan`` is set).

    The plan is the file ``collector solve`` reads, plus its optional ``[capacity]`` table
    (node-type matching, racks, fallback): see :mod:`collector.capacity.config`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    plan: Path | None = None
    """Site plan (.toml/.json): set it to compute a capacity snapshot every interval."""
    interval_s: float = Field(default=30.0, ge=0.5, le=3600)
    keep_s: float = Field(default=30 * _DAY_S, gt=0, le=_TEN_YEARS_S)
    """Snapshots older than this are deleted."""
    stale_basis: StaleBasis = DEFAULT_STALE_BASIS
    """How a stale or offline node counts: its nameplate, its last measured draw, or 0 W."""
    rest_basis: RestBasis = DEFAULT_REST_BASIS
    """What a node's unreported parts (DRAM, NVMe, NICs, fans, PSU losses) count at when its
    input power is not measured: calibrated per node type from the nodes whose BMC reports
    it (else the model), the type's model of its parts, or the model plus the nameplate slack
    (the conservative count of capwatch before measured node power)."""
    warn_pct: float = Field(default=90.0, gt=0, le=1000)
    critical_pct: float = Field(default=98.0, gt=0, le=1000)
    for_s: float = Field(default=60.0, ge=0, le=_DAY_S)
    keep_firing_for_s: float = Field(default=120.0, ge=0, le=_DAY_S)
    rising_w_per_min: float = Field(default=0.0, ge=0)
    """SitePowerRising fires above this slope; 0: 2 % of the cap per minute."""
    rising_window_s: float = Field(default=300.0, gt=0, le=_DAY_S)
    disabled: list[str] = Field(default=[], max_length=16)
    """Capacity rules to leave out, by name (e.g. ["SiteWorstCaseOverCap"]; the names:
    :data:`collector.alerts.names.CAPACITY`)."""

    @model_validator(mode="after")
    def _checked(self) -> Self:
        names.refuse_unknown(self.disabled, names.CAPACITY, field="capacity.disabled")
        if self.critical_pct < self.warn_pct:
            raise ConfigError(
                f"setting 'capacity.critical_pct' ({self.critical_pct:g}) is below "
                f"'capacity.warn_pct' ({self.warn_pct:g}): raise it",
                field="capacity.critical_pct",
            )
        return self

    @property
    def max_age_s(self) -> float:
        """A picture older than this (the capacity job stopped) raises no alerts: three
        intervals, five minutes at least."""
        return max(300.0, 3 * self.interval_s)
