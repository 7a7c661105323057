"""``[pdus]``: the rack PDUs the collector reads over SNMP; the only place its defaults live.

Off while ``units`` is empty. Each ``[[pdus.units]]`` names the rack it feeds (a rack of the
plan: a ``[[capacity.racks]]`` name or an xname cabinet, spelled as every consumer spells it:
:func:`collector.nodefacts.rack_name`, so ``X01001`` is ``x1001``) and the OID of its total
input power;
a rack fed by several PDUs (A and B feeds) lists each: the rack's draw is their sum, counted
only while every one of them has a fresh reading.

Common OIDs (numeric: no MIB is loaded), each an integer scaled by ``scale`` to watts:

- APC PowerNet-MIB ``rPDU2DeviceStatusPower`` (the whole PDU, hundredths of kW):
  ``1.3.6.1.4.1.318.1.1.26.4.3.1.5.1``, ``scale = 10``;
- Raritan PDU2-MIB ``measurementsInletSensorValue`` for ``activePower`` (W, with the sensor's
  decimal digits, usually 0): ``1.3.6.1.4.1.13742.6.5.2.3.1.4.1.1.5``, ``scale = 1``;
- ENTITY-SENSOR-MIB (RFC 3433) ``entPhySensorValue`` of a watts sensor:
  ``1.3.6.1.2.1.99.1.1.1.4.<entity>``, ``scale`` by its ``entPhySensorScale``.
"""

from __future__ import annotations

import re
from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from collector.nodefacts import rack_name
from shared.errors import ConfigError

__all__ = ["PduSettings", "PdusSettings"]

_OID: Final = r"^[0-2](\.(0|[1-9][0-9]{0,9})){1,127}$"
_HOST: Final = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")


class PduSettings(BaseModel):
    """``[[pdus.units]]``: one PDU and the rack it feeds."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rack: str = Field(min_length=1, max_length=128)
    """The rack of the plan this PDU feeds."""
    host: str = Field(min_length=1, max_length=253)
    """The PDU's address on the management network (name, IPv4 or IPv6)."""
    port: int = Field(default=161, ge=1, le=65_535)
    name: str | None = Field(default=None, min_length=1, max_length=128)
    """How logs and metrics name it (default: ``host``, with ``:port`` when not 161)."""
    oid: str = Field(pattern=_OID)
    """The numeric OID of the PDU's total input power (an instance: ends in its index)."""
    scale: float = Field(default=1.0, gt=0, le=1e6)
    """Watts per unit of the value read (APC's hundredths of kW: 10)."""
    community: SecretStr | None = None
    """SNMPv2c community; unset: ``pdus.community``."""

    @property
    def label(self) -> str:
        """Its name in logs and metrics."""
        if self.name is not None:
            return self.name
        return self.host if self.port == 161 else f"{self.host}:{self.port}"

    @field_validator("rack")
    @classmethod
    def _rack(cls, rack: str) -> str:
        return rack_name(rack)

    @model_validator(mode="after")
    def _host(self) -> Self:
        if not _HOST.match(self.host):
            raise ConfigError(
                f"setting 'pdus.units.host' ({self.host!r}) is not a host name or address",
                field="pdus.units.host",
            )
        return self


class PdusSettings(BaseModel):
    """``[pdus]``: read each listed PDU's total input power over SNMPv2c every interval."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    interval_s: float = Field(default=10.0, ge=0.05, le=3600)
    """How often each PDU is read; a rack's reading is fresh for ``stale_intervals`` of these."""
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    """One request's wait for an answer (UDP: sent again ``retries`` times)."""
    retries: int = Field(default=1, ge=0, le=5)
    max_concurrency: int = Field(default=64, ge=1, le=4096)
    """Polls in flight at once, over all PDUs."""
    backoff_max_s: float = Field(default=300.0, gt=0, le=86_400)
    """A failing PDU is retried after interval x 2^(failures-1), jittered, at most this."""
    community: SecretStr = SecretStr("public")
    """SNMPv2c community of every PDU without its own (a read-only community)."""
    units: list[PduSettings] = Field(default=[], max_length=100_000)

    @model_validator(mode="after")
    def _checked(self) -> Self:
        seen: set[str] = set()
        for i, u in enumerate(self.units):
            if u.label in seen:
                raise ConfigError(
                    f"setting 'pdus.units.{i}' ({u.label!r}) names a PDU that an earlier "
                    "[[pdus.units]] already has: give each a distinct host:port or name",
                    field=f"pdus.units.{i}",
                )
            seen.add(u.label)
        return self

    @property
    def enabled(self) -> bool:
        """Whether any PDU is read."""
        return bool(self.units)
