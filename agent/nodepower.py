"""The node's input power (what its PSUs draw), from the first source that answers.

Sources, in order:

- **dcmi**: the BMC in band, IPMI DCMI "Get Power Reading" (DCMI 1.5 section 6.6.1: NetFn
  0x2C, command 0x02, mode 1) through the kernel's IPMI device (``/dev/ipmi0``,
  ``ipmi_devintf``/``ipmi_si``), read by running ``ipmitool dcmi power reading`` (the
  command is a setting: FreeIPMI or a wrapper can stand in). The *instantaneous* reading is
  used: the *average* spans the BMC's statistics period, which can be hours. A reading whose
  state is ``deactivated`` is no reading.
- **hwmon**: the kernel's PSU sensors (Linux ``Documentation/hwmon/sysfs-interface.rst``):
  ``<sysfs>/class/hwmon/hwmon*/power*_input`` in microwatts, counted where the sensor is a
  PSU's input (PMBus drivers label it ``pin``), summed over the PSUs; and the ACPI power meter
  (``name`` ``power_meter``, ``power1_average``: the whole system). Other power sensors
  (a GPU's, a PSU's output) are not the node's input and are left out.

The BMC answers in tens to hundreds of milliseconds, sometimes seconds: :class:`NodePower`
polls off the tick path, in its own task, each read under a timeout, and the sampler takes
the newest reading while it is fresh (no older than two polls). An executable that is
missing, or a device that is absent, turns that source off once (logged), never each tick.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.bounds import Bounds
from agent.sysfs import read_text
from shared.clock import Clock
from shared.logging import get_logger
from shared.schema import MAX_NODE_POWER_W

__all__ = ["DcmiPower", "HwmonPower", "NodePower", "parse_dcmi_reading"]

log = get_logger("agent.nodepower")

_READING: Final = re.compile(r"Instantaneous power reading\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*Watts")
_STATE: Final = re.compile(r"Power reading state is\s*:\s*(\w+)")
_MAX_OUTPUT: Final = 64 * 1024
"""Bytes of a command's output read at most (ipmitool prints ~400)."""


def parse_dcmi_reading(text: str) -> float | None:
    """The instantaneous power (W) of ``ipmitool dcmi power reading``'s output, or ``None``
    (no reading, or the BMC says its power reading is deactivated)."""
    state = _STATE.search(text)
    if state is not None and state.group(1).lower() != "activated":
        return None
    m = _READING.search(text)
    return float(m.group(1)) if m else None


class DcmiPower:
    """Runs ``command`` (``ipmitool dcmi power reading``) and parses its answer."""

    def __init__(self, command: Sequence[str], *, timeout_s: float = 3.0) -> None:
        if not command:
            raise ValueError("the DCMI command must not be empty")
        self.command = tuple(command)
        self.timeout_s = timeout_s
        self.missing = False
        """The executable is not there: the source is off for good."""

    async def read(self) -> float | None:
        """One reading (W), ``None`` when the BMC gave none in time."""
        if self.missing:
            return None
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except (FileNotFoundError, PermissionError) as exc:
            self.missing = True
            log.warning("dcmi_unavailable", command=self.command[0], error=str(exc))
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                assert proc.stdout is not None
                out = await proc.stdout.read(_MAX_OUTPUT)
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.debug("dcmi_timeout", timeout_s=self.timeout_s)
            return None
        if proc.returncode != 0:
            return None
        return parse_dcmi_reading(out.decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class _Sensor:
    path: Path
    scale: float
    """Its unit in W (hwmon counts microwatts)."""


class HwmonPower:
    """Sum of the PSU input sensors (and ACPI power meter) under ``sysfs_root``."""

    def __init__(self, sysfs_root: Path) -> None:
        self.sensors = _find_sensors(sysfs_root / "class" / "hwmon")

    def read(self) -> float | None:
        """Node input power (W) now; ``None``: no sensor, or one could not be read."""
        if not self.sensors:
            return None
        total = 0.0
        for s in self.sensors:
            try:
                total += int(s.path.read_text().strip()) * s.scale
            except (OSError, ValueError):
                return None
        return total


def _find_sensors(hwmon: Path) -> tuple[_Sensor, ...]:
    try:
        devices = sorted(hwmon.iterdir(), key=lambda p: p.name)
    except OSError:
        return ()
    found = []
    for dev in devices:
        name = read_text(dev / "name")
        if name == "power_meter":  # ACPI power meter: the whole system
            avg = dev / "power1_average"
            if avg.exists():
                found.append(_Sensor(avg, 1e-6))
            continue
        for inp in sorted(dev.glob("power*_input")):
            label = read_text(dev / inp.name.replace("_input", "_label")) or ""
            if label.lower().startswith("pin"):  # PMBus: a PSU's input power
                found.append(_Sensor(inp, 1e-6))
    return tuple(found)


class NodePower:
    """Polls the node power sources every ``interval_s`` in its own task (:meth:`run`);
    :meth:`latest` is what a tick takes."""

    def __init__(
        self,
        clock: Clock,
        *,
        dcmi: DcmiPower | None,
        hwmon: HwmonPower | None,
        interval_s: float,
    ) -> None:
        self._clock = clock
        self._dcmi = dcmi
        self._hwmon = hwmon if hwmon is not None and hwmon.sensors else None
        self.interval_s = interval_s
        self._bounds = Bounds(clock, log)
        self._latest: tuple[float, str, float] | None = None
        self.polls = 0

    @property
    def sources(self) -> tuple[str, ...]:
        """The sources it will try, in order."""
        out = []
        if self._dcmi is not None and not self._dcmi.missing:
            out.append("dcmi")
        if self._hwmon is not None:
            out.append("hwmon")
        return tuple(out)

    async def poll(self) -> tuple[float, str] | None:
        """Ask the sources in order; hold and return the first answer."""
        self.polls += 1
        answer: tuple[float, str] | None = None
        if self._dcmi is not None:
            w = await self._dcmi.read()
            if w is not None:
                answer = (w, "dcmi")
        if answer is None and self._hwmon is not None:
            w = await asyncio.to_thread(self._hwmon.read)
            if w is not None:
                answer = (w, "hwmon")
        if answer is not None:
            w = self._bounds.optional(round(answer[0], 1), "node_power_w", MAX_NODE_POWER_W)
            if w is None:
                return None
            answer = (w, answer[1])
            self._latest = (answer[0], answer[1], self._clock.monotonic())
        return answer

    def latest(self) -> tuple[float, str] | None:
        """The newest reading while fresh (at most two polls old), else ``None``."""
        held = self._latest
        if held is None or self._clock.monotonic() - held[2] > 2 * self.interval_s:
            return None
        return held[0], held[1]

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every ``interval_s`` until ``stop``."""
        if not self.sources:
            return
        log.info("node_power_sources", sources=list(self.sources))
        while not stop.is_set():
            await self.poll()
            if not self.sources:
                return
            try:
                async with asyncio.timeout(self.interval_s):
                    await stop.wait()
            except TimeoutError:
                pass
