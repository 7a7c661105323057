"""The agent's settings (see :mod:`shared.settings` for the precedence rules)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.budget import NodeBudget
from shared.durations import format_exact
from shared.errors import ConfigError
from shared.files import parse_json
from shared.schema import MAX_GPUS, MAX_INTERVAL_S, METRICS_ADDRESS_PATTERN
from shared.settings import CapwatchSettings, default_node_id
from shared.text import QUOTED_MOST, quoted
from shared.topics import validate_node_id

__all__ = ["SAMPLE_BYTES_BUDGET", "AgentSettings", "default_spool_dir"]

_WEEK_S: Final = 7 * 86_400.0
SAMPLE_BYTES_BUDGET: Final = 16 * 1024
"""Spool bytes allowed per sample when ``spool_max_bytes`` is unset: an 8-GPU sample with
16 job-attributed processes per GPU (~15.6 KB encoded, bench/bench_jobs.py; ~5.3 KB without
processes, with NVLink, bench/bench_agent.py), so a busy node's day still fits."""
_MIN_SPOOL_BYTES: Final = 1024 * 1024
_MIN_BUFFER_S: Final = 60.0
"""The shortest ``buffer_s``: an MQTT client learns that its connection died only when a
keep-alive goes unanswered (MQTT 3.1.1 section 3.1.2.10; ``mqtt.keepalive_s``, 30 s by
default), and what it published meanwhile waits in the spool to be sent again."""


def default_spool_dir(environ: Mapping[str, str]) -> Path:
    """Where the spool goes when ``spool_dir`` is unset (the entry point passes ``os.environ``).

    systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``, the first of a colon-separated
    list), else ``$XDG_STATE_HOME/capwatch-agent``, else ``~/.local/state/capwatch-agent``
    (the XDG Base Directory default).
    """
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state)
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg:
        return Path(xdg) / "capwatch-agent"
    home = environ.get("HOME", "")
    return (Path(home) if home else Path.home()) / ".local" / "state" / "capwatch-agent"


_GLOB: Final = re.compile(r"[A-Za-z0-9_.:@*?\[\]!-]{1,64}")
"""Interface names (letters, digits, ``_ . : @ -``) with the glob characters ``* ? [ ] !``."""


_GLOBS_WANTED: Final = (
    'must be globs, comma-separated (bond*,br-data) or a list of strings (["bond*"])'
)


class AgentSettings(CapwatchSettings):
    """Settings of ``agent run``."""

    node_id: str = Field(default_factory=default_node_id)
    interval_s: float = Field(default=5.0, ge=1.0, le=MAX_INTERVAL_S)
    slow_interval_s: float = Field(default=60.0, ge=1.0)
    """ECC counters and remapped rows are read this often."""
    buffer_s: float = Field(default=86_400.0, ge=0.0, le=_WEEK_S)
    """How old a spooled sample may get while the broker is away before it is dropped
    (counted); at most a week. A day by default: the collector refuses older samples. At
    least a minute and two sampling intervals: shorter, the spool dropped samples the broker
    had not taken (``0``: all of them, and the whole spool at start), so it is refused."""
    spool_dir: Path | None = None
    """Directory of the on-disk spool (one agent per directory); unset: see
    :func:`default_spool_dir`. Env ``CAPWATCH_SPOOL_DIR``; flag ``--spool-dir``."""
    spool_max_bytes: int | None = Field(default=None, ge=_MIN_SPOOL_BYTES, le=2**40)
    """Bytes the spool may hold; unset: ``buffer_s / interval_s`` samples of
    ``SAMPLE_BYTES_BUDGET`` (16 KiB): a day at 5 s is at most ~270 MiB, at 1 s ~1.3 GiB (a
    cap, not an allocation: the spool holds only what the broker has not taken)."""
    spool_fsync_s: float = Field(default=1.0, gt=0.0, le=3600.0)
    """How often spooled samples are fsynced (in a worker thread, never on the tick): a
    host that loses power loses at most this much of what it had not sent."""
    ingest_budget: NodeBudget = NodeBudget()
    """The collector's ``ingest_budget`` (give both the same values): the spool is published
    at half of it (``shared.budget.PACE_SHARE``), so a backlog replayed after an outage is
    never refused as ``rate_limited``; a day of 5 s samples takes ~12 minutes."""
    watermark_hold_s: float = Field(default=600.0, ge=0.0, le=_WEEK_S)
    """How long a sample the broker acknowledged stays in the spool waiting for the
    collector's store watermark to pass it (so a broker that loses its state loses nothing).
    Only once a watermark was heard; past this, it goes unconfirmed (an older collector, or
    one that stopped publishing, costs at most this much spool). 0: forget at PUBACK."""
    gpu_backend: Literal["nvml", "fake", "none"] = "nvml"
    fake_gpus: int = Field(default=8, ge=0, le=MAX_GPUS)
    """GPUs of the fake backend (tests, demos on machines without NVIDIA GPUs)."""
    fake_mig: Annotated[dict[int, tuple[str, ...]], NoDecode] = Field(default_factory=dict)
    """The fake backend's GPUs in MIG mode: GPU index -> the GPU instance profiles created
    on it, as ``nvidia-smi mig -cgi`` names an H100 80GB's (``1g.10gb``, ``1g.10gb+me``,
    ``1g.20gb``, ``2g.20gb``, ``3g.40gb``, ``4g.40gb``, ``7g.80gb``; agent/fake_mig.py); an
    empty list is MIG mode without instances. Flag ``--fake-mig 0=3g.40gb,2g.20gb,2g.20gb``
    (once per GPU); env ``CAPWATCH_FAKE_MIG``: ``0=3g.40gb,2g.20gb;1=7g.80gb`` or a JSON
    object; TOML: a table of GPU index -> list."""
    sysfs_root: Path = Path("/sys")
    node_power: Literal["auto", "dcmi", "hwmon", "none"] = "auto"
    """Where the node's input power is read: ``auto`` tries the BMC in band (DCMI, when
    ``ipmi_device`` exists) then the PSU sensors (hwmon) and takes the first that answers;
    ``dcmi`` or ``hwmon`` only that one; ``none`` not at all. Env ``CAPWATCH_NODE_POWER``."""
    ipmi_device: Path = Path("/dev/ipmi0")
    """The kernel's IPMI device (``ipmi_devintf``): DCMI is tried only where it exists."""
    dcmi_command: Annotated[tuple[str, ...], NoDecode] = ("ipmitool", "dcmi", "power", "reading")
    """The command that prints a DCMI power reading as ipmitool does (run, never a shell).
    Env ``CAPWATCH_DCMI_COMMAND``: words separated by spaces."""
    dcmi_timeout_s: float = Field(default=3.0, gt=0.0, le=60.0)
    """How long one DCMI read may take before it is abandoned (the tick never waits)."""
    node_power_interval_s: float = Field(default=10.0, ge=1.0, le=MAX_INTERVAL_S)
    """How often the node power is read (a BMC updates its reading about every second)."""
    proc_root: Path = Path("/proc")
    attribute_jobs: bool = True
    """Attribute each GPU process to its Slurm job or Kubernetes pod and its user (from
    ``proc_root``'s cgroup and environment files; agent/jobs.py). Env
    ``CAPWATCH_ATTRIBUTE_JOBS``."""
    pod_log_dir: Path = Path("/var/log")
    """Where the kubelet writes ``containers/`` and ``pods/`` (the pods' log directories):
    the names of the pods and containers a process's cgroup names by id. Env
    ``CAPWATCH_POD_LOG_DIR``."""
    nic_include: Annotated[tuple[str, ...], NoDecode] = ()
    """Globs of virtual interfaces to count too (``bond*``); physical ones always count.
    Env ``CAPWATCH_NIC_INCLUDE``: comma-separated or a JSON list."""
    nic_exclude: Annotated[tuple[str, ...], NoDecode] = ()
    """Globs of interfaces never counted, physical or not; wins over ``nic_include``.
    Env ``CAPWATCH_NIC_EXCLUDE``: comma-separated or a JSON list."""

    dcgm_hostname_label: Literal["Hostname", "hostname"] = "Hostname"
    """How ``/metrics`` spells dcgm-exporter's host label on the ``DCGM_FI_*`` series:
    ``Hostname`` (dcgm-exporter's releases so far) or ``hostname`` (its main branch); pick
    the one your dashboards and the site's dcgm-exporters use. Flag
    ``--dcgm-hostname-label``, env ``CAPWATCH_DCGM_HOSTNAME_LABEL``."""
    metrics_advertise: str | None = None
    """``HOST:PORT`` at which Prometheus reaches the ``metrics_listen`` server, announced in
    the inventory (the collector's service discovery lists it). Unset: the listen address
    when it names one host, else (``0.0.0.0``, ``::``) this node's FQDN, with the bound
    port. Flag ``--metrics-advertise``, env ``CAPWATCH_METRICS_ADVERTISE``."""

    @model_validator(mode="after")
    def _buffer_keeps_a_sample(self) -> Self:
        floor = max(_MIN_BUFFER_S, 2 * self.interval_s)
        if self.buffer_s < floor:
            raise ConfigError(
                f"setting 'buffer_s' = {format_exact(round(self.buffer_s * 1000))} would drop "
                "spooled samples the broker has not taken yet: give at least "
                f"{format_exact(round(floor * 1000))} (a minute and two sampling intervals), "
                "e.g. --buffer 1d (the default; CAPWATCH_BUFFER_S in seconds)",
                field="buffer_s",
            )
        return self

    @field_validator("metrics_advertise")
    @classmethod
    def _advertise_is_a_target(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(METRICS_ADDRESS_PATTERN, value):
            raise ValueError(
                f"{value!r} is not HOST:PORT as Prometheus scrapes it: write e.g. "
                "gpu-node-017.cluster.example:9400, 10.1.2.3:9400 or [fd00::17]:9400 "
                "(port 1-65535)"
            )
        return value

    @field_validator("spool_dir", mode="before")
    @classmethod
    def _spool_dir_is_named(cls, value: Any) -> Any:
        # Path("") is ".": an empty value would spool into the working directory (`/`
        # under systemd). Unset, not empty, picks the default.
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "is empty: name the spool's directory (--spool-dir, CAPWATCH_SPOOL_DIR), or "
                "leave it unset for the default"
            )
        return value

    @field_validator("node_id")
    @classmethod
    def _node_id_is_topic_safe(cls, value: str) -> str:
        validate_node_id(value)
        return value

    @field_validator("dcmi_command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(value.split())
        return value

    @field_validator("dcmi_command")
    @classmethod
    def _command_is_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not all(value):
            raise ValueError("must name a command, e.g. 'ipmitool dcmi power reading'")
        return value

    @field_validator("nic_include", "nic_exclude", mode="before")
    @classmethod
    def _split_patterns(cls, value: Any) -> Any:
        """``"bond*, br-data"`` or ``'["bond*"]'`` (environment) as a list of globs.

        Any other JSON (``'"ifb0"'``, ``'{"a": 1}'``) is refused rather than taken as a glob
        that matches nothing.
        """
        if isinstance(value, (list, tuple)):
            if not all(isinstance(p, str) for p in value):  # [1] in a config file
                raise ValueError(_GLOBS_WANTED)
            return value
        if not isinstance(value, str):  # a number or a table in a config file
            raise ValueError(_GLOBS_WANTED)
        if value.lstrip()[:1] in ("[", "{", '"'):
            try:
                parsed = parse_json(value)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"not a JSON list ({exc}): write the globs comma-separated instead"
                ) from exc
            if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
                raise ValueError(_GLOBS_WANTED)
            return parsed
        return [part.strip() for part in value.split(",") if part.strip()]

    @field_validator("nic_include", "nic_exclude")
    @classmethod
    def _patterns_are_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not _GLOB.fullmatch(pattern):
                raise ValueError(
                    f"{pattern!r} is not an interface name glob (letters, digits, _ . : @ - "
                    "and * ? [ ] !, up to 64; e.g. 'bond*')"
                )
        return value

    @field_validator("fake_mig", mode="before")
    @classmethod
    def _parse_layouts(cls, value: Any) -> Any:
        """``"0=3g.40gb,2g.20gb;1=7g.80gb"`` or a JSON object (environment, flags)."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("{"):
            try:
                return parse_json(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object ({exc})") from exc
        layouts: dict[str, list[str]] = {}
        for part in filter(None, (p.strip() for p in value.split(";"))):
            gpu, sep, profiles = part.partition("=")
            if not sep:
                raise ValueError(
                    f"{quoted(part)} names no GPU: write GPU=PROFILES, e.g. "
                    "0=3g.40gb,2g.20gb,2g.20gb"
                )
            gpu = gpu.strip()
            if gpu in layouts:
                shown = gpu if len(gpu) <= QUOTED_MOST else quoted(gpu)
                raise ValueError(f"GPU {shown} has two layouts: give one --fake-mig per GPU")
            layouts[gpu] = [p.strip() for p in profiles.split(",") if p.strip()]
        return layouts

    @field_validator("fake_mig")
    @classmethod
    def _layouts_fit(
        cls, value: dict[int, tuple[str, ...]], info: ValidationInfo
    ) -> dict[int, tuple[str, ...]]:
        if not value:
            return value
        if info.data.get("gpu_backend") != "fake":
            raise ValueError("MIG layouts are for the fake GPU backend: set gpu_backend = fake")
        gpus = info.data.get("fake_gpus", 0)
        # The fake's own table of what an H100 can hold; a demo setting, so loaded only here.
        from agent.fake_mig import layout  # noqa: PLC0415

        for gpu, profiles in value.items():
            if not 0 <= gpu < gpus:
                raise ValueError(f"GPU {gpu} is not one of the {gpus} fake GPUs (0..{gpus - 1})")
            try:
                layout(gpu, profiles)
            except ValueError as exc:
                raise ValueError(f"GPU {gpu}: {exc}") from None
        return value

    @property
    def buffer_samples(self) -> int:
        """Samples taken in ``buffer_s`` (at least two: its floor is two intervals)."""
        return int(self.buffer_s / self.interval_s)

    @property
    def spool_bytes(self) -> int:
        """The spool's byte bound: ``spool_max_bytes``, or sized from ``buffer_s``."""
        if self.spool_max_bytes is not None:
            return self.spool_max_bytes
        return max(_MIN_SPOOL_BYTES, self.buffer_samples * SAMPLE_BYTES_BUDGET)
