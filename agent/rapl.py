"""CPU package (and DRAM) power from Intel RAPL energy counters in sysfs.

The powercap framework (Linux ``Documentation/power/powercap/powercap.rst``): one
``intel-rapl:N`` zone per package, ``intel-rapl:N:M`` sub-zones (``name`` says ``dram``).

``<sysfs>/class/powercap/intel-rapl:N/energy_uj`` counts microjoules and wraps at
``max_energy_range_uj``. Since Linux 5.10 (CVE-2020-8694) only root may read it: without
permission the reader says so once and reports ``None`` from then on.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path

from agent.bounds import Bounds
from agent.rates import WrappingCounterRate
from agent.sysfs import read_text
from shared.clock import Clock
from shared.logging import get_logger
from shared.schema import MAX_CPU_POWER_W

__all__ = ["RaplReader"]

_PACKAGE_RE = re.compile(r"^intel-rapl:\d+$")
_SUBZONE_RE = re.compile(r"^intel-rapl:\d+:\d+$")


@dataclass(frozen=True, slots=True)
class _Zone:
    name: str
    energy_path: str
    rate: WrappingCounterRate


class RaplReader:
    """Sum of the package zones' (plus DRAM subzones') power over the last interval.

    ``psys`` (the whole SoC) is skipped because it contains the packages; ``core`` and
    ``uncore`` subzones are skipped because the package contains them.
    """

    def __init__(self, sysfs_root: Path, clock: Clock) -> None:
        self._clock = clock
        self._log = get_logger("agent.rapl")
        self._bounds = Bounds(clock, self._log)
        self._disabled = False
        self._zones = _find_zones(sysfs_root / "class" / "powercap")

    @property
    def zones(self) -> tuple[str, ...]:
        """Names of the zones summed, e.g. ``("intel-rapl:0", "intel-rapl:0:2")``."""
        return tuple(z.name for z in self._zones)

    def sample(self) -> float | None:
        """CPU power in W since the previous call.

        ``None`` on the first call, for an interval with an inexplicable counter or a sum
        past the schema's ``MAX_CPU_POWER_W``, with no zones, and for good once a counter
        could not be read.
        """
        if self._disabled or not self._zones:
            return None
        now = self._clock.monotonic()
        total = 0.0
        known = True
        for zone in self._zones:
            try:
                with open(zone.energy_path, "rb") as f:
                    energy_uj = int(f.read())
            except (OSError, ValueError) as exc:
                self._disable(zone, exc)
                return None
            rate = zone.rate.update(energy_uj, now)  # every zone is read, so all stay in step
            if rate is None:
                known = False
            else:
                total += rate
        if not known:
            return None
        return self._bounds.optional(round(total / 1e6, 2), "cpu_power_w", MAX_CPU_POWER_W)

    def _disable(self, zone: _Zone, exc: Exception) -> None:
        self._disabled = True
        if isinstance(exc, PermissionError):
            reason = "permission_denied"  # root-only since Linux 5.10
        elif isinstance(exc, OSError) and exc.errno is not None:
            reason = errno.errorcode.get(exc.errno, str(exc.errno)).lower()
        else:
            reason = "unparsable"
        self._log.warning("rapl_unreadable", path=zone.energy_path, reason=reason, error=str(exc))


def _find_zones(powercap: Path) -> list[_Zone]:
    try:
        entries = sorted(p.name for p in powercap.iterdir())
    except OSError:
        return []  # no powercap: AMD before RAPL support, VMs, non-x86
    zones = []
    for entry in entries:
        directory = powercap / entry
        name = read_text(directory / "name")
        if _PACKAGE_RE.match(entry):
            if name == "psys":
                continue
        elif not (_SUBZONE_RE.match(entry) and name == "dram"):
            continue
        max_range = read_text(directory / "max_energy_range_uj")
        if max_range is None or not max_range.isdigit() or int(max_range) == 0:
            continue
        zones.append(
            _Zone(
                name=entry,
                energy_path=str(directory / "energy_uj"),
                rate=WrappingCounterRate(int(max_range)),
            )
        )
    return zones
