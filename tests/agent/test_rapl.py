"""RaplReader over a fake powercap tree: zone choice, wrap, permission denied, no zones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.rapl import RaplReader
from shared.clock import FakeClock
from tests.agent.helpers import rapl_zone


def _set(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


def _unreadable_file(tmp_path: Path) -> Path:
    """A file whose open() for reading fails with EACCES, also when the tests run as root.

    Root bypasses file modes, so ``chmod 000`` proves nothing under root. Sysfs refuses to
    open a write-only attribute (one without a ``show`` method) for reading, whoever asks:
    ``/sys/bus/*/uevent`` are such attributes on every Linux system.
    """
    for candidate in sorted(Path("/sys/bus").glob("*/uevent")):
        try:
            candidate.open("rb").close()
        except PermissionError:
            return candidate
        except OSError:
            continue
    if os.geteuid() != 0:
        path = tmp_path / "unreadable"
        path.write_text("1\n")
        path.chmod(0)
        return path
    pytest.skip("no file here refuses root a read (no /sys/bus/*/uevent)")


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock."""
    return FakeClock()


def test_packages_and_dram_are_summed(tmp_path: Path, clock: FakeClock) -> None:
    """Package zones plus DRAM subzones; core, uncore and psys would count power twice."""
    pkg0 = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    pkg1 = rapl_zone(tmp_path, "intel-rapl:1", "package-1", 5_000_000)
    dram = rapl_zone(tmp_path, "intel-rapl:0:2", "dram", 0)
    core = rapl_zone(tmp_path, "intel-rapl:0:0", "core", 0)
    psys = rapl_zone(tmp_path, "intel-rapl:2", "psys", 0)
    mmio = rapl_zone(tmp_path, "intel-rapl-mmio:0", "package-0", 0)
    rapl = RaplReader(tmp_path, clock)
    assert rapl.zones == ("intel-rapl:0", "intel-rapl:0:2", "intel-rapl:1")
    assert rapl.sample() is None
    clock.advance(2)
    _set(pkg0, 1_000_000 + 400_000_000)  # 200 W
    _set(pkg1, 5_000_000 + 300_000_000)  # 150 W
    _set(dram, 60_000_000)  # 30 W
    for ignored in (core, psys, mmio):
        _set(ignored, 999_000_000)
    assert rapl.sample() == 380.0


def test_wrapped_counter_adds_max_range(tmp_path: Path, clock: FakeClock) -> None:
    """A package counter that wrapped past max_energy_range_uj still gives the right power."""
    pkg = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 990_000_000, max_range=1_000_000_000)
    rapl = RaplReader(tmp_path, clock)
    rapl.sample()
    clock.advance(5)
    _set(pkg, 240_000_000)  # 10 J to the wrap, 240 J after it
    assert rapl.sample() == 50.0


def test_permission_denied_is_logged_once(tmp_path: Path, clock: FakeClock) -> None:
    """energy_uj is root-only since Linux 5.10: one log line, then None without retrying."""
    pkg = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    (pkg / "energy_uj").unlink()
    (pkg / "energy_uj").symlink_to(_unreadable_file(tmp_path))
    with capture_logs() as logs:
        rapl = RaplReader(tmp_path, clock)
        assert rapl.zones == ("intel-rapl:0",)
        for _ in range(3):
            assert rapl.sample() is None
            clock.advance(5)
    assert [(e["event"], e["reason"], e["log_level"]) for e in logs] == [
        ("rapl_unreadable", "permission_denied", "warning")
    ]
    assert logs[0]["path"] == str(pkg / "energy_uj")


def test_unreadable_after_start_disables_reader(tmp_path: Path, clock: FakeClock) -> None:
    """A zone that becomes unreadable (here: gone) stops RAPL for good, with one log line."""
    pkg = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    rapl = RaplReader(tmp_path, clock)
    rapl.sample()
    (pkg / "energy_uj").unlink()
    with capture_logs() as logs:
        clock.advance(5)
        assert rapl.sample() is None
        _set(pkg, 100)
        clock.advance(5)
        assert rapl.sample() is None
    assert [(e["event"], e["reason"]) for e in logs] == [("rapl_unreadable", "enoent")]


def test_no_powercap_means_none_without_noise(tmp_path: Path, clock: FakeClock) -> None:
    """No RAPL on this machine (VM, non-Intel): None and no log line."""
    (tmp_path / "class" / "powercap").mkdir(parents=True)
    with capture_logs() as logs:
        for root in (tmp_path, tmp_path / "missing"):
            rapl = RaplReader(root, clock)
            assert rapl.zones == ()
            assert rapl.sample() is None
    assert logs == []


def test_a_zone_name_that_is_not_utf8_is_skipped_not_fatal(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A zone whose ``name`` is not UTF-8 is unknown, so left out; the others still count."""
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    odd = rapl_zone(tmp_path, "intel-rapl:0:2", "dram", 0)
    (odd / "name").write_bytes(b"\xff\xfedram\n")
    assert RaplReader(tmp_path, clock).zones == ("intel-rapl:0",)
