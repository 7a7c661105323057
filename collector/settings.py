"""The collector's settings (see :mod:`shared.settings` for the precedence rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import Field

from collector.store.queries import DEFAULT_INTERVAL_S, DEFAULT_STALE_INTERVALS
from collector.store.reader import DEFAULT_DB_PATH
from shared.settings import CapwatchSettings

__all__ = ["CollectorSettings"]


_TEN_YEARS_S: Final = 10 * 365.25 * 86_400


class CollectorSettings(CapwatchSettings):
    """Settings of ``collector run`` and the commands that read the store."""

    db_path: Path = DEFAULT_DB_PATH
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Fixed MQTT client id: with clean_session off, the broker keeps our messages for us.
    Unset: the MQTT username (the shipped broker config binds client ids to usernames),
    else ``capwatch-collector``. See :attr:`session_client_id`."""
    retention_s: float = Field(default=86_400.0, gt=0, le=_TEN_YEARS_S)
    """Raw samples that arrived longer ago are deleted, in small chunks."""
    retention_check_s: float = Field(default=30.0, gt=0, le=86_400)
    retention_chunk_rows: int = Field(default=5_000, ge=100)
    batch_max_rows: int = Field(default=4_000, ge=1)
    batch_max_delay_s: float = Field(default=0.25, gt=0, le=3600)
    """Unused since the writer commits whatever is waiting at once; kept so configs load."""
    queue_max: int = Field(default=100_000, ge=100)
    """About this many validated messages wait for the writer; then the reader pauses."""
    queue_max_bytes: int = Field(default=256 << 20, ge=1 << 20)
    """... or about this many bytes of payload, whichever comes first (memory bound)."""
    max_clock_skew_s: float = Field(default=300.0, gt=0, le=30 * 86_400)
    """A sample stamped further ahead of the collector's clock is rejected as clock_skew."""
    quarantine_max_rows: int = Field(default=10_000, ge=100)
    """Rejected messages kept for `collector query --rejected` (the newest)."""
    sqlite_synchronous: Literal["full", "normal"] = "full"
    """full: an acknowledged sample survives a power cut; normal: only a process crash."""
    compress_payloads: bool = True
    """Store sample JSON zstd-compressed (8x smaller, ~11 us per sample in the writer thread)."""
    expected_interval_s: float = Field(default=DEFAULT_INTERVAL_S, gt=0, le=3600)
    """A node with no sample for ``stale_intervals`` x its interval is stale."""
    stale_intervals: float = Field(default=DEFAULT_STALE_INTERVALS, gt=0, le=1000)

    @property
    def session_client_id(self) -> str:
        """The client id the broker keeps the collector's session under."""
        return self.client_id or self.mqtt.username or "capwatch-collector"
