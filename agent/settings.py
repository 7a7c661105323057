"""The agent's settings (see :mod:`shared.settings` for the precedence rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from shared.settings import CapwatchSettings, default_node_id
from shared.topics import validate_node_id

__all__ = ["AgentSettings"]


class AgentSettings(CapwatchSettings):
    """Settings of ``agent run``."""

    node_id: str = Field(default_factory=default_node_id)
    interval_s: float = Field(default=5.0, ge=1.0, le=3600.0)
    slow_interval_s: float = Field(default=60.0, ge=1.0)
    """ECC counters and remapped rows are read this often."""
    buffer_s: float = Field(default=3600.0, ge=0.0)
    """How much sampling time to keep while the broker is away (samples = buffer_s / interval_s)."""
    gpu_backend: Literal["nvml", "fake", "none"] = "nvml"
    fake_gpus: int = Field(default=8, ge=0, le=64)
    """GPUs of the fake backend (tests, demos on machines without NVIDIA GPUs)."""
    sysfs_root: Path = Path("/sys")
    proc_root: Path = Path("/proc")

    @field_validator("node_id")
    @classmethod
    def _node_id_is_topic_safe(cls, value: str) -> str:
        validate_node_id(value)
        return value

    @property
    def buffer_samples(self) -> int:
        """Capacity of the offline buffer in samples (at least one)."""
        return max(1, int(self.buffer_s / self.interval_s))
