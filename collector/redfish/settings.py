"""``[redfish]``: the BMCs the collector polls out of band; the only place its defaults live.

:class:`collector.redfish.poller.RedfishPoller` takes this model as it is. Off while
``bmcs`` is empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from shared.errors import ConfigError
from shared.topics import NODE_ID_RE, NODE_ID_RULE

__all__ = ["BmcSettings", "RedfishSettings"]

_MAX_BMCS: Final = 100_000
_CHASSIS_ID: Final = r"^[A-Za-z0-9][A-Za-z0-9._~:@!$&'()*+,;=-]{0,127}$"
"""A Redfish resource id as one URL path segment (RFC 3986 pchar less '%' and '/')."""


class BmcSettings(BaseModel):
    """``[[redfish.bmcs]]``: one node's BMC on the management network."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    node: str
    """The capwatch node id whose input power this BMC reads (as its agent names it)."""
    url: HttpUrl
    """The BMC's base URL, ``https://10.1.0.17`` (``/redfish/v1/...`` is added)."""
    chassis: str | None = Field(default=None, pattern=_CHASSIS_ID)
    """The chassis id under ``/redfish/v1/Chassis``; unset: found in the collection (the
    first chassis with power readings, preferring rack-mount, blade and stand-alone ones)."""
    ca_file: Path | None = None
    """CA bundle (PEM) that verifies this BMC's certificate; unset: ``redfish.ca_file``."""
    insecure: bool = False
    """Do not verify this BMC's TLS certificate (self-signed): anyone on the management
    network could then read the credentials sent to it. Prefer ``ca_file``."""

    @field_validator("node")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not NODE_ID_RE.match(value):
            raise ValueError(f"not a node id: {NODE_ID_RULE} (the id its agent reports)")
        return value

    @model_validator(mode="after")
    def _base_only(self) -> Self:
        u = self.url
        if u.query or u.fragment or u.username or u.password:
            # ConfigError, not ValueError: pydantic would quote the URL, password and all.
            raise ConfigError(
                f"setting 'redfish.bmcs.url' of node {self.node!r}: give the BMC's base URL "
                "only (https://host[:port]), no query, fragment or user:password (credentials "
                "go in redfish.credentials_file)",
                field="redfish.bmcs.url",
            )
        return self

    @property
    def base_url(self) -> str:
        """The URL without a trailing slash (paths from the service are appended)."""
        return str(self.url).rstrip("/")


class RedfishSettings(BaseModel):
    """``[redfish]``: poll each listed BMC's Redfish service for its node's input power.

    Credentials come from ``credentials_file`` (:mod:`collector.redfish.credentials`), never
    from this file: a TOML or JSON file readable by the collector's user only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    credentials_file: Path | None = None
    """User and password per BMC (by node) or by default; required when ``bmcs`` is set."""
    interval_s: float = Field(default=10.0, ge=0.05, le=3600)
    """How often each BMC is read. A reading is fresh for ``stale_intervals`` of these."""
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    """One poll (connect, TLS, every request of it), after which it counts as a timeout."""
    max_concurrency: int = Field(default=64, ge=1, le=4096)
    """Polls in flight at once, over all BMCs."""
    backoff_max_s: float = Field(default=300.0, gt=0, le=86_400)
    """A failing BMC is retried after interval x 2^(failures-1), jittered, at most this."""
    ca_file: Path | None = None
    """CA bundle (PEM) that verifies the BMCs' certificates; unset: the system trust store."""
    max_response_bytes: int = Field(default=1 << 20, ge=4096, le=64 << 20)
    """A larger answer is refused (a BMC's Power resource is a few kB to a few 100 kB)."""
    bmcs: list[BmcSettings] = Field(default=[], max_length=_MAX_BMCS)

    @model_validator(mode="after")
    def _checked(self) -> Self:
        if not self.bmcs:
            return self
        if self.credentials_file is None:
            raise ConfigError(
                "setting 'redfish.credentials_file' is not set but [[redfish.bmcs]] are: point "
                "it at a TOML or JSON file with the BMCs' user and password (mode 0600)",
                field="redfish.credentials_file",
            )
        seen: set[str] = set()
        for i, bmc in enumerate(self.bmcs):
            if bmc.node in seen:
                raise ConfigError(
                    f"setting 'redfish.bmcs.{i}.node' ({bmc.node!r}) names a node that an "
                    "earlier [[redfish.bmcs]] already has: one BMC per node",
                    field=f"redfish.bmcs.{i}.node",
                )
            seen.add(bmc.node)
        return self

    @property
    def enabled(self) -> bool:
        """Whether any BMC is polled."""
        return bool(self.bmcs)
