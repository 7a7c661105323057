"""A node's input power out of Redfish documents (pure: no I/O).

Which resource, in the order tried (DMTF Redfish Resource and Schema Guide, DSP2046):

1. ``Chassis/{id}/EnvironmentMetrics`` ``PowerWatts.Reading`` (EnvironmentMetrics, schema
   v1.0 of 2020.4 on): the chassis' power, the resource DMTF points new clients to since
   ``Power`` was deprecated (2020.4).
2. ``Chassis/{id}/Power`` ``PowerControl[0].PowerConsumedWatts``: the first power control
   is the chassis' input power on every BMC we know (its ``Name`` is "System Input Power" in
   DMTF's mockups); older firmware has only this one.

``PowerSubsystem`` is not read: it holds the supplies' ``InputPowerWatts`` one resource per
supply (``PowerSupplies/{n}/Metrics``), three requests or more per poll for what the two
above give in one, and its figures need not add up to the chassis' (DMTF's own
public-rackmount1 mockup reports 937.4 W per supply beside a 374 W chassis).

Every link followed comes from the service (``@odata.id``) and must be a path under
``/redfish/v1/``: a BMC cannot send the poller, with its credentials, to another host.
A reading must be a JSON number in ``[0, MAX_NODE_POWER_W]`` (the wire schema's bound for
``node_power_w``: one bound, whoever reads the BMC).
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

from shared.errors import RedfishError
from shared.schema import MAX_NODE_POWER_W

__all__ = [
    "CHASSIS_COLLECTION",
    "ChassisLinks",
    "bounded_watts",
    "chassis_links",
    "chassis_members",
    "environment_watts",
    "pick_chassis",
    "power_control_watts",
]

CHASSIS_COLLECTION: Final = "/redfish/v1/Chassis"
_PATH: Final = re.compile(r"/redfish/v1/[A-Za-z0-9._~:@!$&'()*+,;=/%-]{1,400}\Z")
_PREFERRED_TYPES: Final = ("RackMount", "Blade", "StandAlone", "Sled", "Enclosure")
"""A server's own chassis; others (``Component``, ``Card``, ``Module``, a GPU baseboard) are
parts whose power is part of the server's."""


class ChassisLinks(NamedTuple):
    """What the poller reads of one chassis resource."""

    path: str
    chassis_type: str | None
    environment: str | None
    """``EnvironmentMetrics``' path; ``None``: the chassis has none."""
    power: str | None
    """``Power``'s path; ``None``: the chassis has none."""


def _path(value: object, what: str) -> str:
    if not isinstance(value, str) or not _PATH.match(value) or "/../" in f"{value}/":
        raise RedfishError(f"{what} is not a path under /redfish/v1/", outcome="invalid")
    return value


def _link(doc: dict[str, Any], key: str) -> str | None:
    ref = doc.get(key)
    if ref is None:
        return None
    if not isinstance(ref, dict):
        raise RedfishError(f"{key} is not a link", outcome="invalid")
    return _path(ref.get("@odata.id"), f"{key}'s @odata.id")


def chassis_members(doc: object) -> list[str]:
    """The chassis paths of a ``ChassisCollection`` document, in its order."""
    if not isinstance(doc, dict) or not isinstance(doc.get("Members"), list):
        raise RedfishError("the Chassis collection has no Members list", outcome="invalid")
    return [
        _path(m.get("@odata.id") if isinstance(m, dict) else None, "a chassis member")
        for m in doc["Members"][:256]
    ]


def chassis_links(path: str, doc: object) -> ChassisLinks:
    """The power resources a ``Chassis`` document links to."""
    if not isinstance(doc, dict):
        raise RedfishError(f"{path} is not a JSON object", outcome="invalid")
    kind = doc.get("ChassisType")
    return ChassisLinks(
        path,
        kind if isinstance(kind, str) else None,
        _link(doc, "EnvironmentMetrics"),
        _link(doc, "Power"),
    )


def pick_chassis(candidates: list[ChassisLinks]) -> ChassisLinks | None:
    """The chassis whose power is the node's: the first of a server's own types that has a
    power resource, else the first with one (``None``: none has)."""
    powered = [c for c in candidates if c.environment is not None or c.power is not None]
    for c in powered:
        if c.chassis_type in _PREFERRED_TYPES:
            return c
    return powered[0] if powered else None


def bounded_watts(value: object, what: str) -> float | None:
    """``value`` as watts: ``None`` when the service reports none (absent or null), else a
    number within the wire bound (:class:`RedfishError` ``out_of_range`` past it, ``invalid``
    when not a number)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RedfishError(f"{what} is not a number", outcome="invalid")
    try:
        w = float(value)
    except OverflowError:  # an integer past a double's range
        w = float("inf")
    if not 0.0 <= w <= MAX_NODE_POWER_W:  # NaN fails too
        raise RedfishError(
            f"{what} = {w:g} W is outside [0, {MAX_NODE_POWER_W:g}]", outcome="out_of_range"
        )
    return w


def environment_watts(doc: object) -> float | None:
    """``PowerWatts.Reading`` of an ``EnvironmentMetrics`` document (``None``: not there)."""
    if not isinstance(doc, dict):
        raise RedfishError("EnvironmentMetrics is not a JSON object", outcome="invalid")
    pw = doc.get("PowerWatts")
    if pw is None:
        return None
    if not isinstance(pw, dict):
        raise RedfishError("EnvironmentMetrics.PowerWatts is not an object", outcome="invalid")
    return bounded_watts(pw.get("Reading"), "PowerWatts.Reading")


def power_control_watts(doc: object) -> float | None:
    """``PowerControl[0].PowerConsumedWatts`` of a ``Power`` document (``None``: not there)."""
    if not isinstance(doc, dict):
        raise RedfishError("Power is not a JSON object", outcome="invalid")
    controls = doc.get("PowerControl")
    if controls is None or controls == []:
        return None
    if not isinstance(controls, list) or not isinstance(controls[0], dict):
        raise RedfishError("Power.PowerControl is not a list of objects", outcome="invalid")
    return bounded_watts(controls[0].get("PowerConsumedWatts"), "PowerConsumedWatts")
