"""Every rule's name (its ``alertname`` label), spelled once, by family.

The builders name their rules from here (:func:`collector.alerts.builtin.builtin_rules`,
:func:`collector.capacity.rules.capacity_rules`,
:func:`collector.governance.rules.governance_rules`), and each settings model checks its
``disabled`` list against its family's names when it loads (:func:`refuse_unknown`), so a
typo is the same one line, exit 2, for every command, without importing the rules (which
bring the live view). This module imports nothing of ours but the error.

A family is a named tuple whose fields are its rules' names, each its own value: written once,
``BUILTIN.GpuXid == "GpuXid"``, and the family iterates over them in the order its builder
makes the rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, NamedTuple

from shared.errors import ConfigError

__all__ = ["BUILTIN", "CAPACITY", "GOVERNANCE", "LABEL_NAME", "LABEL_NAME_RE", "refuse_unknown"]

LABEL_NAME: Final = r"[a-zA-Z_][a-zA-Z0-9_]*"
"""Prometheus' classic label-name rule, what every Alertmanager accepts
(https://prometheus.io/docs/concepts/data_model/): a rule's name (its ``alertname``), its
labels, a matcher's label, an inhibit rule's ``equal``."""
LABEL_NAME_RE: Final = re.compile(LABEL_NAME + r"\Z")


class _Builtin(NamedTuple):
    """The built-in rules (``[alerts]``)."""

    NodeOffline: str
    NodeStale: str
    GpuTemperature: str
    GpuXid: str
    GpuEccUncorrectable: str
    GpuRowRemap: str
    GpuClockThrottled: str
    NodeClockSkew: str
    NodeRejectsRising: str
    NodeSamplesMissing: str
    NodeAgentConflict: str
    JobGpuIdle: str


BUILTIN: Final = _Builtin(*_Builtin._fields)


class _Capacity(NamedTuple):
    """The capacity rules (``[capacity]``)."""

    SitePowerHigh: str
    SitePowerCritical: str
    RackPowerOverLimit: str
    SiteWorstCaseOverCap: str
    SitePowerRising: str


CAPACITY: Final = _Capacity(*_Capacity._fields)


class _Governance(NamedTuple):
    """The governance rules (``[governance]``)."""

    LeaseEndingSoon: str
    LeaseNoticeDeadline: str
    LeaseExpiredInUse: str
    LeasedGpusIdle: str
    QuotaHigh: str
    QuotaFull: str
    QuotaExceeded: str
    CohortOvercommitted: str


GOVERNANCE: Final = _Governance(*_Governance._fields)


def refuse_unknown(disabled: Iterable[str], known: Iterable[str], *, field: str) -> None:
    """:class:`ConfigError` naming the setting ``field`` (e.g. ``alerts.disabled``), the
    unknown names and the valid ones, when ``disabled`` names a rule that is none of
    ``known``."""
    names = sorted(known)
    unknown = sorted(set(disabled).difference(names))
    if unknown:
        raise ConfigError(
            f"setting {field!r} names unknown rule{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}: use one of {', '.join(names)}",
            field=field,
        )
