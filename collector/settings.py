"""The collector's settings (see :mod:`shared.settings` for the precedence rules)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    field_validator,
    model_validator,
)

from collector.governance.settings import GovernanceSettings
from collector.store.queries import DEFAULT_INTERVAL_S, DEFAULT_STALE_INTERVALS
from collector.store.reader import DEFAULT_DB_PATH
from shared.errors import ConfigError
from shared.settings import CapwatchSettings

if TYPE_CHECKING:
    from collector.alerts.builtin import BuiltinSettings
    from collector.alerts.route import Route

__all__ = ["AlertSettings", "CollectorSettings", "ReceiverSettings", "RouteSettings"]


_TEN_YEARS_S: Final = 10 * 365.25 * 86_400
_DAY_S: Final = 86_400.0


class AlertSettings(BaseModel):
    """``[alerts]``: when the built-in rules fire (see ``collector rules`` for all of them).

    Defaults equal :class:`collector.alerts.builtin.BuiltinSettings` (a test holds them so).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    eval_interval_s: float = Field(default=5.0, ge=0.5, le=3600)
    """How often the rules are evaluated on the live view."""
    offline_for_s: float = Field(default=30.0, ge=0, le=_DAY_S)
    stale_intervals: float = Field(default=3.0, gt=0, le=1000)
    stale_for_s: float = Field(default=0.0, ge=0, le=_DAY_S)
    gpu_temp_c: float = Field(default=85.0, ge=20, le=150)
    gpu_temp_for_s: float = Field(default=60.0, ge=0, le=_DAY_S)
    gpu_temp_keep_firing_for_s: float = Field(default=60.0, ge=0, le=_DAY_S)
    xid_codes: list[int] = Field(default=[48, 63, 64, 74, 79, 92, 94, 95], max_length=256)
    xid_window_s: float = Field(default=60.0, gt=0, le=_DAY_S)
    xid_keep_firing_for_s: float = Field(default=900.0, ge=0, le=_DAY_S)
    throttle_for_s: float = Field(default=120.0, ge=0, le=_DAY_S)
    throttle_keep_firing_for_s: float = Field(default=60.0, ge=0, le=_DAY_S)
    ecc_keep_firing_for_s: float = Field(default=0.0, ge=0, le=_DAY_S)
    clock_skew_window_s: float = Field(default=60.0, gt=0, le=_DAY_S)
    clock_skew_keep_firing_for_s: float = Field(default=300.0, ge=0, le=_DAY_S)
    rejects_window_s: float = Field(default=300.0, gt=0, le=_DAY_S)
    rejects_min: int = Field(default=10, ge=1)
    rejects_keep_firing_for_s: float = Field(default=300.0, ge=0, le=_DAY_S)
    disabled: list[str] = Field(default=[], max_length=64)
    """Built-in rules to leave out, by name (e.g. ["NodeRejectsRising"])."""
    external_url: str = Field(default="", max_length=1024, pattern=r"^(https?://\S+)?$")
    """Where people reach this collector: ``externalURL`` and ``generatorURL`` in webhooks."""

    def builtin(self) -> BuiltinSettings:
        """The rules' thresholds from these settings; an unknown rule name is refused."""
        from collector.alerts.builtin import BuiltinSettings, builtin_rules  # noqa: PLC0415

        known = {rule.name for rule in builtin_rules()}
        unknown = sorted(set(self.disabled) - known)
        if unknown:
            raise ConfigError(
                f"setting 'alerts.disabled' names unknown rules {unknown}: use names from "
                f"`collector rules` ({', '.join(sorted(known))})",
                field="alerts.disabled",
            )
        values = self.model_dump(exclude={"eval_interval_s", "external_url"})
        values["xid_codes"] = frozenset(self.xid_codes)
        values["disabled"] = frozenset(self.disabled)
        return BuiltinSettings(**values)


_HEADER: Final = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"


class ReceiverSettings(BaseModel):
    """``[[receivers]]``: a webhook that gets every firing and resolved notification.

    Which alerts it hears of: ``[[routes]]`` (none: every receiver hears of every alert).
    The secret is a :class:`SecretStr`: never logged, never in an error line.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: HttpUrl
    secret: SecretStr | None = None
    """Signs each request (HMAC-SHA256, as Grafana does); unset: unsigned."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    """One request, connect to last byte read."""
    max_age_s: float = Field(default=3600.0, gt=0, le=7 * _DAY_S)
    """A notification not delivered by then is a dead letter."""
    max_in_flight: int = Field(default=4, ge=1, le=64)
    max_alerts: int = Field(default=0, ge=0)
    """Alerts per message (0: all; the rest are counted in ``truncatedAlerts``)."""
    signature_header: str = Field(default="X-Capwatch-Signature", pattern=_HEADER)
    timestamp_header: str = Field(default="X-Capwatch-Timestamp", pattern=r"^$|" + _HEADER)
    """Empty: sign the body alone, as Grafana does without a timestamp header."""
    idempotency_header: str = Field(default="Idempotency-Key", pattern=_HEADER)


def _duration(value: str, field: str) -> float:
    from shared.units import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(value, field=field)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


class RouteSettings(BaseModel):
    """``[[routes]]``: which alerts go to which receivers, grouped how, notified when.

    Routes are tried in order; the first whose ``match`` all match takes the alert (and the
    next ones too while ``continue`` is true). Durations are text: ``"5s"``, ``"1m"``, ``"4h"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    match: list[str] = Field(default=[], max_length=32)
    """Label matchers: ``name=value``, ``name!=value``, ``name=~regex``, ``name!~regex``."""
    receivers: list[str] = Field(default=[], max_length=32)
    """Receiver names (``[[receivers]]``); empty: every receiver."""
    group_by: list[str] = Field(default=["alertname"], max_length=32)
    """Labels that make a group; ``["..."]``: every label (no grouping)."""
    group_wait: str = "5s"
    """A new group's first notification waits this long for more alerts."""
    group_interval: str = "1m"
    """Then at most this often, when the group changed."""
    repeat_interval: str = "4h"
    """Unchanged and firing: sent again after this long."""
    continue_: bool = Field(default=False, alias="continue")
    """Also try the routes after this one."""

    @field_validator("match")
    @classmethod
    def _matchers(cls, value: list[str]) -> list[str]:
        from collector.alerts.route import parse_matcher  # noqa: PLC0415

        for m in value:
            parse_matcher(m)
        return value

    @field_validator("group_wait", "group_interval", "repeat_interval")
    @classmethod
    def _durations(cls, value: str) -> str:
        _duration(value, "duration")
        return value

    def route(self, all_receivers: list[str]) -> Route:
        """The route these settings describe."""
        from collector.alerts.route import Route, parse_matcher  # noqa: PLC0415

        return Route(
            tuple(parse_matcher(m) for m in self.match),
            tuple(self.receivers or all_receivers),
            tuple(self.group_by),
            _duration(self.group_wait, "group_wait"),
            _duration(self.group_interval, "group_interval"),
            _duration(self.repeat_interval, "repeat_interval"),
            self.continue_,
        )


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

    alerts: AlertSettings = AlertSettings()
    governance: GovernanceSettings = GovernanceSettings()
    """Thresholds of the lease and quota rules (``[governance]``)."""
    receivers: list[ReceiverSettings] = Field(default=[], max_length=32)
    """Webhooks every alert notification goes to (``[[receivers]]`` tables)."""

    @field_validator("receivers")
    @classmethod
    def _unique_receiver_names(cls, value: list[ReceiverSettings]) -> list[ReceiverSettings]:
        names = [r.name for r in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"receiver names must be unique: {dupes} appear twice")
        return value

    routes: list[RouteSettings] = Field(default=[], max_length=64)
    """Which receivers hear of which alerts (``[[routes]]``); none: every receiver, alerts
    grouped by alertname."""

    @model_validator(mode="after")
    def _routes_name_known_receivers(self) -> CollectorSettings:
        known = {r.name for r in self.receivers}
        for i, route in enumerate(self.routes):
            unknown = sorted(set(route.receivers) - known)
            if unknown:
                raise ConfigError(
                    f"setting 'routes.{i}.receivers' names unknown receivers {unknown}: use "
                    f"names of [[receivers]] tables ({', '.join(sorted(known)) or 'none'})",
                    field=f"routes.{i}.receivers",
                )
        return self

    def alert_routes(self) -> list[Route]:
        """The routes in force: those configured, or the default route."""
        from collector.alerts.route import default_route  # noqa: PLC0415

        names = [r.name for r in self.receivers]
        if not self.routes:
            return [default_route(names)]
        return [r.route(names) for r in self.routes]

    @property
    def session_client_id(self) -> str:
        """The client id the broker keeps the collector's session under."""
        return self.client_id or self.mqtt.username or "capwatch-collector"
