"""Node input power in the agent: DCMI through ipmitool's output, hwmon PSU sensors, the
first source that answers, read off the tick path and stamped on the sample."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from agent.nodepower import DcmiPower, HwmonPower, NodePower, parse_dcmi_reading
from agent.service import build_node_power, build_sampler
from agent.settings import AgentSettings
from shared.clock import FakeClock
from shared.schema import decode_sample, encode
from tests.helpers import wait_until

HWMON = Path(__file__).parents[1] / "data" / "hwmon"

# `ipmitool dcmi power reading` on a Dell PowerEdge (ipmitool 1.8.19), as printed.
DCMI_OUTPUT = """
    Instantaneous power reading:                  8412 Watts
    Minimum during sampling period:                 12 Watts
    Maximum during sampling period:              10020 Watts
    Average power reading over sample period:     7980 Watts
    IPMI timestamp:                           Thu Jan  1 00:00:00 1970
    Sampling period:                          00000001 Seconds.
    Power reading state is:                   activated
"""


def _script(tmp_path: Path, name: str, body: str) -> Path:
    """An executable standing in for ipmitool: the BMC is outside any test machine."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_dcmi_output_gives_the_instantaneous_reading_not_the_average() -> None:
    """8,412 W instantaneous (the 7,980 W average spans the BMC's period); a deactivated
    reading or garbage is no reading."""
    assert parse_dcmi_reading(DCMI_OUTPUT) == 8412.0
    assert parse_dcmi_reading(DCMI_OUTPUT.replace("activated", "deactivated")) is None
    assert parse_dcmi_reading("Error: no response from BMC") is None


async def test_dcmi_runs_the_command_under_a_timeout_and_turns_off_when_missing(
    tmp_path: Path,
) -> None:
    """A command printing the reading answers; one that hangs is abandoned at the timeout;
    one that fails answers nothing; a missing executable turns the source off."""
    out = tmp_path / "out.txt"
    out.write_text(DCMI_OUTPUT)
    assert await DcmiPower([str(_script(tmp_path, "ok", f"cat {out}"))]).read() == 8412.0
    hang = DcmiPower([str(_script(tmp_path, "hang", "exec sleep 30"))], timeout_s=0.2)
    assert await asyncio.wait_for(hang.read(), 10) is None
    assert await DcmiPower([str(_script(tmp_path, "fail", f"cat {out}; exit 1"))]).read() is None
    missing = DcmiPower([str(tmp_path / "no-ipmitool")])
    assert await missing.read() is None
    assert missing.missing


@pytest.mark.parametrize(
    ("layout", "watts", "sensors"),
    [("pmbus_two_psus", 1210.5, 2), ("acpi_power_meter", 431.0, 1), ("gpu_only", None, 0)],
)
def test_hwmon_sums_psu_inputs_only(layout: str, watts: float | None, sensors: int) -> None:
    """Two PMBus PSUs' ``pin`` sensors sum to the node's input (612 + 598.5 W; their
    outputs and the GPU's sensor are not counted); an ACPI power meter is the whole system;
    a GPU's sensor alone gives no node power."""
    hw = HwmonPower(HWMON / layout)
    assert len(hw.sensors) == sensors
    assert hw.read() == watts


async def test_the_first_source_that_answers_is_taken_and_a_reading_expires(
    tmp_path: Path,
) -> None:
    """DCMI first; when the BMC fails, the PSU sensors; a reading older than two polls is
    not put on a sample."""
    clock = FakeClock()
    flag = tmp_path / "bmc-up"
    out = tmp_path / "out.txt"
    out.write_text(DCMI_OUTPUT)
    dcmi = DcmiPower([str(_script(tmp_path, "ipmitool", f"test -e {flag} && cat {out}"))])
    reader = NodePower(
        clock, dcmi=dcmi, hwmon=HwmonPower(HWMON / "pmbus_two_psus"), interval_s=10.0
    )
    assert reader.sources == ("dcmi", "hwmon")
    flag.touch()
    assert await reader.poll() == (8412.0, "dcmi")
    flag.unlink()
    assert await reader.poll() == (1210.5, "hwmon")
    assert reader.latest() == (1210.5, "hwmon")
    clock.advance(20.5)
    assert reader.latest() is None


async def test_the_agent_stamps_its_bmc_reading_on_the_sample(tmp_path: Path) -> None:
    """Settings -> sampler: with an IPMI device and the DCMI command, the node power task
    reads 8,412 W and the next sample carries it, inside the wire schema."""
    out = tmp_path / "out.txt"
    out.write_text(DCMI_OUTPUT)
    device = tmp_path / "ipmi0"
    device.touch()
    settings = AgentSettings(
        node_id="x1000c0s0b0n0",
        gpu_backend="none",
        ipmi_device=device,
        dcmi_command=(str(_script(tmp_path, "ipmitool", f"cat {out}")),),
        sysfs_root=HWMON / "gpu_only",
    )
    clock = FakeClock()
    sampler = build_sampler(settings, clock)
    assert sampler.node_power is not None
    assert sampler.node_power.sources == ("dcmi",)
    sampler.start()
    try:
        assert sampler.sample().node_power_w is None  # not read yet: never waits on a tick
        stop = asyncio.Event()
        task = asyncio.create_task(sampler.node_power.run(stop))
        reader = sampler.node_power
        await wait_until(lambda: reader.latest() is not None, what="a DCMI reading")
        stop.set()
        await task
        s = decode_sample(encode(sampler.sample()))
        assert (s.node_power_w, s.node_power_source) == (8412.0, "dcmi")
    finally:
        sampler.close()


def test_no_device_and_no_psu_sensor_means_no_node_power(tmp_path: Path) -> None:
    """Without /dev/ipmi0 (auto) and without PSU sensors there is no reader at all; 'none'
    turns a present source off."""
    settings = AgentSettings(
        node_id="n1", ipmi_device=tmp_path / "absent", sysfs_root=HWMON / "gpu_only"
    )
    assert build_node_power(settings, FakeClock()) is None
    psus = settings.model_copy(update={"sysfs_root": HWMON / "pmbus_two_psus"})
    reader = build_node_power(psus, FakeClock())
    assert reader is not None
    assert reader.sources == ("hwmon",)
    off = psus.model_copy(update={"node_power": "none"})
    assert build_node_power(off, FakeClock()) is None
    assert os.path.exists(HWMON / "pmbus_two_psus")


def test_a_sensor_label_that_is_not_utf8_is_skipped_not_fatal(tmp_path: Path) -> None:
    """A hwmon label that is not UTF-8 (a firmware string) is no PSU input: the other
    device's ``pin`` sensor is still found and read."""
    for dev, label in (("hwmon0", b"\xffpin\n"), ("hwmon1", b"pin\n")):
        d = tmp_path / "class" / "hwmon" / dev
        d.mkdir(parents=True)
        (d / "name").write_bytes(b"dps920ab\n")
        (d / "power1_label").write_bytes(label)
        (d / "power1_input").write_text("612000000\n")
    hw = HwmonPower(tmp_path)
    assert [s.path.parent.name for s in hw.sensors] == ["hwmon1"]
    assert hw.read() == 612.0
