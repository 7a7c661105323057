"""One small sysfs or procfs attribute read as text or an integer; ``None`` when it cannot be.

Sysfs attributes are one value each, newline-terminated (the kernel's
Documentation/filesystems/sysfs.rst). Reading one fails in more ways than a missing file:
``EINVAL`` from a NIC's ``speed`` while its link is down, ``EACCES`` on a root-only
attribute, ``ENODEV`` when the device went away between the directory listing and the read,
and bytes that are not UTF-8 from a driver or firmware string (a hwmon ``label``, a
powercap zone's ``name``). None of these may stop the agent: each is an absent value.
A procfs file of many lines (``/proc/cpuinfo``) is read whole, its bytes that are not
UTF-8 replaced, so that one bad byte costs one character, not the file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_int", "read_lines", "read_text"]


def read_text(path: Path) -> str | None:
    """The attribute's value, stripped; ``None`` when it cannot be read or decoded."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_lines(path: Path) -> str | None:
    """The whole file, each byte that is not UTF-8 replaced by U+FFFD; ``None`` when it
    cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_int(path: Path, base: int = 10) -> int | None:
    """The attribute as an integer in ``base`` (16 reads ``0x10de``); ``None`` when it cannot
    be read or is not a number."""
    text = read_text(path)
    try:
        return None if text is None else int(text, base)
    except ValueError:
        return None
