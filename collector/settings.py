"""The collector's settings (see :mod:`shared.settings` for the precedence rules)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    field_validator,
    model_validator,
)

from collector.alerts.names import LABEL_NAME, LABEL_NAME_RE
from collector.alerts.settings import AlertSettings
from collector.capacity.settings import CapacitySettings
from collector.governance.settings import GovernanceSettings
from collector.live import DEFAULT_MAX_NODES
from collector.nodefacts import DEFAULT_INTERVAL_S, DEFAULT_STALE_INTERVALS, Staleness
from collector.paths import (
    DEFAULT_DB_PATH,
    NO_FILE,
    PgTarget,
    StoreTarget,
    is_url,
    names_no_file,
    parse_target,
)
from collector.pdu.settings import PduSettings, PdusSettings
from collector.redfish.settings import BmcSettings, RedfishSettings
from collector.sdtargets import DEFAULT_SD_TARGET_HOSTS, TargetHosts
from shared.budget import NodeBudget
from shared.durations import parse_duration
from shared.errors import ConfigError
from shared.settings import CapwatchSettings, DurationText, MqttSettings, default_node_id
from shared.topics import SHARE_GROUP_RE, SHARE_GROUP_RULE

if TYPE_CHECKING:
    from collector.alerts.route import Route
    from collector.alerts.silence import InhibitRule

__all__ = [
    "AlertSettings",
    "AlertmanagerSettings",
    "BillingSettings",
    "BmcSettings",
    "CapacitySettings",
    "CollectorMqttSettings",
    "CollectorSettings",
    "ElectionSettings",
    "GovernanceSettings",
    "InhibitRuleSettings",
    "PduSettings",
    "PdusSettings",
    "ReceiverSettings",
    "RedfishSettings",
    "RollupSettings",
    "RouteSettings",
]
# AlertSettings, CapacitySettings, GovernanceSettings and RedfishSettings live with the code
# that takes them as they are (one place for each default); named here too, as the tables of
# this file.


_TEN_YEARS_S: Final = 10 * 365.25 * 86_400
_DAY_S: Final = 86_400.0


_HEADER: Final = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"


_EXEC_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ReceiverSettings(BaseModel):
    """``[[receivers]]``: where every firing and resolved notification goes.

    ``kind = "webhook"`` (the default): an HTTP POST to ``url``. ``kind = "exec"``: runs
    ``command`` (an argv list, no shell) with the same Alertmanager v4 body on stdin and the
    group's labels in its environment (:mod:`collector.alerts.actions`); exit status 0 is
    delivered, anything else is retried like a 5xx. Both go through the outbox: retries,
    ``timeout_s``, ``max_in_flight``, ``max_age_s`` and dead letters are the same.

    Which alerts it hears of: ``[[routes]]`` (none: every receiver hears of every alert).
    The secret is a :class:`SecretStr`: never logged, never in an error line.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["webhook", "exec"] = "webhook"
    url: HttpUrl | None = None
    """``webhook``: where to POST."""
    command: list[str] | None = Field(default=None, min_length=1, max_length=64)
    """``exec``: the program and its arguments, e.g. ``["/etc/capwatch/slurm-drain.sh"]``."""
    env: dict[str, str] = Field(default={}, max_length=64)
    """``exec``: more environment for the command (``CAPWATCH_RESUME = "1"``); ``PATH`` is
    ``/usr/local/sbin:...:/bin`` unless given here. The collector's own environment is not
    passed on."""
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

    @model_validator(mode="after")
    def _target_of_its_kind(self) -> ReceiverSettings:
        if self.kind == "webhook" and (self.url is None or self.command is not None):
            raise ValueError(
                f'receiver {self.name!r}: a webhook needs url = "https://..." and no command '
                '(or set kind = "exec" to run a command)'
            )
        if self.kind == "exec" and (self.command is None or self.url is not None):
            raise ValueError(
                f'receiver {self.name!r}: kind = "exec" needs command = ["/path/to/program", '
                "...] and no url"
            )
        for key in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"receiver {self.name!r}: env name {key!r} is not a variable name")
        return self

    def exec_env(self) -> dict[str, str]:
        """The command's base environment: ``PATH`` and :attr:`env`."""
        return {"PATH": _EXEC_PATH, **self.env}


def _valid_matchers(value: list[str]) -> list[str]:
    """Each of ``value`` a label matcher Alertmanager accepts (``name=~regex``...)."""
    from collector.alerts.route import parse_matcher  # noqa: PLC0415

    for m in value:
        parse_matcher(m)
    return value


def _valid_label_name(name: str) -> None:
    """Refuse what is not a Prometheus label name, saying what one is."""
    if not LABEL_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a label name ({LABEL_NAME})")


class RouteSettings(BaseModel):
    """``[[routes]]``: which alerts go to which receivers, grouped how, notified when.

    Routes are tried in order; the first whose ``match`` all match takes the alert (and the
    next ones too while ``continue`` is true). Durations are text in Prometheus' grammar
    (:mod:`shared.durations`): ``"5s"``, ``"1m"``, ``"4h"``, ``"1h30m"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    match: list[str] = Field(default=[], max_length=32)
    """Label matchers: ``name=value``, ``name!=value``, ``name=~regex``, ``name!~regex``."""
    receivers: list[str] = Field(default=[], max_length=32)
    """Receiver names (``[[receivers]]``); empty: every receiver."""
    group_by: list[str] = Field(default=["alertname"], max_length=32)
    """Labels that make a group; ``["..."]``: every label (no grouping)."""
    group_wait: DurationText = "5s"
    """A new group's first notification waits this long for more alerts."""
    group_interval: DurationText = "1m"
    """Then at most this often, when the group changed."""
    repeat_interval: DurationText = "4h"
    """Unchanged and firing: sent again after this long."""
    continue_: bool = Field(default=False, alias="continue")
    """Also try the routes after this one."""

    _matchers = field_validator("match")(_valid_matchers)

    @field_validator("group_by")
    @classmethod
    def _group_labels(cls, value: list[str]) -> list[str]:
        # Alertmanager's checks (config/config.go, Route.UnmarshalYAML): label names, none
        # twice, and the "..." wildcard only alone.
        from collector.alerts.route import ALL_LABELS  # noqa: PLC0415

        if ALL_LABELS in value and len(value) > 1:
            raise ValueError(f"{ALL_LABELS!r} (every label) must be the only entry")
        for name in value:
            if name != ALL_LABELS:
                _valid_label_name(name)
            if value.count(name) > 1:
                raise ValueError(f"{name!r} is named twice")
        return value

    def route(self, all_receivers: list[str]) -> Route:
        """The route these settings describe."""
        from collector.alerts.route import Route, parse_matcher  # noqa: PLC0415

        return Route(
            tuple(parse_matcher(m) for m in self.match),
            tuple(self.receivers or all_receivers),
            tuple(self.group_by),
            parse_duration(self.group_wait, field="group_wait"),
            parse_duration(self.group_interval, field="group_interval"),
            parse_duration(self.repeat_interval, field="repeat_interval"),
            self.continue_,
        )


class InhibitRuleSettings(BaseModel):
    """``[[inhibit_rules]]``: as Alertmanager's, a firing alert matching ``source_matchers``
    mutes the alerts matching ``target_matchers`` that have the same ``equal`` labels.

    Unset: one rule, ``NodeOffline`` mutes the other alerts of its node. An empty list
    (``inhibit_rules = []``) turns inhibition off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_matchers: list[str] = Field(min_length=1, max_length=32)
    target_matchers: list[str] = Field(min_length=1, max_length=32)
    equal: list[str] = Field(default=[], max_length=32)

    _matchers = field_validator("source_matchers", "target_matchers")(_valid_matchers)

    @field_validator("equal")
    @classmethod
    def _label_names(cls, value: list[str]) -> list[str]:
        for name in value:
            _valid_label_name(name)
        return value


class AlertmanagerSettings(BaseModel):
    """``[[alertmanagers]]``: an Alertmanager that capwatch pushes its alerts to, as
    Prometheus does (``POST /api/v2/alerts``; firing alerts re-sent every ``resend_interval``,
    resolutions sent for 15 minutes). Alertmanager's own routes, silences and inhibitions
    then apply; capwatch's ``[[routes]]`` and silences do not (it gets every firing alert).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: HttpUrl
    """Alertmanager's base URL (``http://alertmanager:9093``); ``/api/v2/alerts`` is added."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    resend_interval: DurationText = "1m"
    """Firing alerts are sent again this often (Prometheus' ``--rules.alert.resend-delay``)."""

    @field_validator("resend_interval")
    @classmethod
    def _duration_ok(cls, value: str) -> str:
        if parse_duration(value, field="resend_interval") <= 0:
            raise ValueError("resend_interval must be > 0")
        return value

    @property
    def resend_s(self) -> float:
        """``resend_interval`` in seconds."""
        return parse_duration(self.resend_interval, field="resend_interval")

    @property
    def alerts_url(self) -> str:
        """Where alerts are posted."""
        return str(self.url).rstrip("/") + "/api/v2/alerts"


class RollupSettings(BaseModel):
    """``[rollups]``: the 1-minute and 1-hour aggregates kept beyond the raw samples, and
    the usage ledger made of them (:mod:`collector.store.rollups`, :mod:`collector.ledger`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: bool = True
    """Roll samples up as they are stored (off: no rollups, no ledger; raw samples only)."""
    retention_1m_s: float = Field(default=90 * _DAY_S, gt=0, le=_TEN_YEARS_S)
    """1-minute rollups whose bucket began longer ago are deleted (by the retention job)."""
    retention_1h_s: float = Field(default=730 * _DAY_S, gt=0, le=_TEN_YEARS_S)
    """1-hour rollups and usage-ledger hours older than this are deleted."""
    ledger_interval_s: float = Field(default=300.0, ge=1, le=86_400)
    """How often the usage ledger recomputes the hours whose rollups moved."""
    fold_interval_s: float = Field(default=60.0, ge=0.1, le=3_600)
    """How often the samples stored since are folded into the rollups (sooner once 100,000
    wait): the rarer, the cheaper per sample; the ledger sees a sample after its fold."""
    fold_shards: int = Field(default=128, ge=1, le=1024)
    """The staged samples split into at most this many ranges of node names (no fewer than
    64 nodes each: a small site has one), a fold writing one range per transaction with
    sample batches committed between them (:mod:`collector.store.fold`). 1: a fold is one
    transaction, and nothing is stored or acknowledged while it runs. Measured at 12,500
    8-GPU nodes ingesting 3,800-5,200 samples/s on 2 cores shared with other work (load
    1.1-4.2; ``bench/bench_ingest_stall.py``, 2 runs each): 128, the longest gap between two
    commits 534-627 ms, p99 145-158 ms, p50 3.7-6.1 ms; 1 shard: 1,559-1,684 ms (the fold),
    p99 158-194 ms, p50 5.7-9.5 ms, at the same collector CPU (66-73 s). Shards by a hash of
    the name, before: longest 409-530 ms but p99 252-373 ms (each part touched pages all over
    the rollups table)."""

    @model_validator(mode="after")
    def _hours_outlive_minutes(self) -> Self:
        if self.retention_1h_s < self.retention_1m_s:
            raise ValueError(
                f"retention_1h_s ({self.retention_1h_s:g}) is shorter than retention_1m_s "
                f"({self.retention_1m_s:g}): keep the hours at least as long as the minutes"
            )
        return self


class BillingSettings(BaseModel):
    """``[billing]``: prices for ``collector usage``'s cost column. A lease's GPU-hours are
    priced by its contract (``gpu_hour_by_lease``), else its tenant's price
    (``gpu_hour_by_tenant``), else ``gpu_hour``; energy at ``kwh`` on the node energy."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    currency: str = Field(default="EUR", min_length=1, max_length=8)
    gpu_hour: float = Field(default=0.0, ge=0, le=1e6)
    """Price of an allocated GPU-hour."""
    gpu_hour_by_tenant: dict[str, float] = Field(default={}, max_length=10_000)
    gpu_hour_by_lease: dict[str, float] = Field(default={}, max_length=10_000)
    """Contract prices, by lease name."""
    kwh: float = Field(default=0.0, ge=0, le=1e6)
    """Price of a kWh of node energy (measured, else modelled)."""

    def gpu_hour_price(self, tenant: str | None, lease: str) -> float:
        """The price of one allocated GPU-hour of ``lease`` (held by ``tenant``)."""
        if lease in self.gpu_hour_by_lease:
            return self.gpu_hour_by_lease[lease]
        if tenant is not None and tenant in self.gpu_hour_by_tenant:
            return self.gpu_hour_by_tenant[tenant]
        return self.gpu_hour


class StoreSettings(BaseModel):
    """``[store]``: a PostgreSQL store instead of the SQLite file ``db_path`` (a site with
    several collectors, or more data than one file on one machine should hold)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    """``postgresql://user@host:port/database``; unset: the SQLite file ``db_path``. No
    password in it: ``PGPASSWORD``, ``~/.pgpass`` or :attr:`password_file`."""
    password_file: Path | None = None
    """A file whose first line is the database role's password."""

    @field_validator("url")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not is_url(value):
            raise ValueError(
                "takes a postgresql://user@host:port/database URL; a SQLite file goes in db_path"
            )
        parse_target(value, field="store.url")  # one line on a foreign scheme or a password
        return value


class CollectorMqttSettings(MqttSettings):
    """``[mqtt]`` of the collector: the broker settings both programs share, plus how
    several collectors share the samples."""

    share_group: str | None = None
    """Several collectors: the name of their MQTT shared subscription. Each sample goes to
    one member of the group; inventories and statuses to all. Unset: one collector, a
    plain subscription to every node's topics (:func:`shared.topics.collector_subscriptions`).
    Flag ``--share-group``, env ``CAPWATCH_MQTT__SHARE_GROUP``."""
    live_username: str | None = None
    """With a share group: the MQTT user of the leader's live feed (every node's samples
    at QoS 0 on a connection of its own, :data:`shared.topics.LIVE_SUBSCRIPTION`). It must
    differ from ``username``: a broker that binds client ids to usernames would otherwise
    give the feed's clean session the collector's own persistent one, and discard it.
    Unset without a ``username``: the feed connects anonymously, client id ``<id>-live``."""
    live_password: SecretStr | None = None
    admin_username: str | None = None
    """The MQTT user of commands that change what the broker retains: ``collector
    inventory forget`` clears a forgotten node's retained status, inventory and watermark
    with it (deploy/mosquitto.acl grants ``capwatch-admin`` exactly that). It must differ
    from ``username``: a broker that binds client ids to usernames would hand the command's
    clean session the collector's persistent one, and discard it. Unset without a
    ``username``: the command connects anonymously. Password: ``admin_password``
    (``CAPWATCH_MQTT__ADMIN_PASSWORD``)."""
    admin_password: SecretStr | None = None

    @field_validator("share_group")
    @classmethod
    def _share_group(cls, value: str | None) -> str | None:
        if value is not None and not SHARE_GROUP_RE.match(value):
            raise ValueError(f"not usable in a topic filter: use {SHARE_GROUP_RULE}")
        return value

    @model_validator(mode="after")
    def _live_user_of_its_own(self) -> Self:
        if self.share_group is None or self.username is None:
            return self
        if self.live_username is None or self.live_username == self.username:
            raise ConfigError(
                "setting 'mqtt.live_username' must name a second MQTT user when "
                "mqtt.share_group and mqtt.username are set (the leader's live feed of every "
                f"sample; e.g. {self.username}-live, with read access to "
                "capwatch/v1/nodes/+/sample: deploy/mosquitto.acl)",
                field="mqtt.live_username",
            )
        return self

    @model_validator(mode="after")
    def _admin_user_of_its_own(self) -> Self:
        if self.admin_username is not None and self.admin_username == self.username:
            raise ConfigError(
                f"setting 'mqtt.admin_username' = {self.admin_username!r} is the collector's "
                "own MQTT user: name another user, allowed to write the nodes' retained "
                "topics (e.g. capwatch-admin: deploy/mosquitto.acl), or leave it unset",
                field="mqtt.admin_username",
            )
        return self

    def admin_password_value(self) -> str | None:
        """The admin user's password in clear text, for the MQTT client only."""
        return None if self.admin_password is None else self.admin_password.get_secret_value()

    def live_password_value(self) -> str | None:
        """The live feed user's password in clear text, for the MQTT client only."""
        return None if self.live_password is None else self.live_password.get_secret_value()


class ElectionSettings(BaseModel):
    """``[election]``: which of several collectors runs the leader's jobs (alerts,
    governance, capacity, webhook delivery, the Alertmanager push).

    On a SQLite store there is one collector and it always leads; on a PostgreSQL store the
    collectors elect one through a lease row in the database
    (:mod:`collector.store.leader`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    lease_s: float = Field(default=7.0, ge=1.0, le=600.0)
    """How long a leader's lease lasts without renewal (database clock). It renews every
    third of it; a leader that cannot renew stops its jobs before the lease ends, and
    another collector takes over once it has ended. 7 s: a SIGKILLed leader is replaced,
    first evaluation included, within 10 s (bench/bench_failover.py: 7.5–7.8 s; with 10 s,
    8.0–11.7 s)."""
    poll_s: float | None = Field(default=None, gt=0, le=60.0)
    """How often a standby collector tries to take an ended lease; unset: a tenth of
    ``lease_s``."""
    url: SecretStr | None = None
    """The PostgreSQL database that holds the lease; unset: the store's, when the store is
    PostgreSQL (the normal case). Set alone, it elects among collectors that each keep a
    SQLite store (tests and trials; their stores are not shared)."""

    @property
    def poll_interval_s(self) -> float:
        """Seconds between a standby collector's attempts to take the lease."""
        return self.lease_s / 10 if self.poll_s is None else self.poll_s


class CollectorSettings(CapwatchSettings):
    """Settings of ``collector run`` and the commands that read the store."""

    mqtt: CollectorMqttSettings = CollectorMqttSettings()

    db_path: Path = DEFAULT_DB_PATH
    store: StoreSettings = StoreSettings()
    """``[store] url``: PostgreSQL instead of the SQLite file ``db_path``."""

    @field_validator("db_path", mode="before")
    @classmethod
    def _db_path_is_a_path(cls, value: Any) -> Any:
        if isinstance(value, str) and is_url(value):
            raise ValueError(
                "is a SQLite file path: a postgresql:// URL goes in store.url "
                "(CAPWATCH_STORE__URL) or --db"
            )
        if isinstance(value, str | Path) and names_no_file(value):
            raise ValueError(NO_FILE)
        return value

    @property
    def store_target(self) -> StoreTarget:
        """The store every connection opens: ``store.url`` when set, else ``db_path``."""
        if self.store.url is not None:
            return PgTarget(self.store.url, self.store.password_file)
        return self.db_path

    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Fixed MQTT client id: with clean_session off, the broker keeps our messages for us.
    Unset: the MQTT username (the shipped broker config binds client ids to usernames),
    else ``capwatch-collector`` (with ``mqtt.share_group``:
    ``capwatch-collector-<hostname>-<instance>``). See :attr:`session_client_id`."""
    instance: str = Field(default="1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
    """This collector's name among those on the same host (``--instance``): part of the
    default client id with a share group, and of its name in the leader election."""
    election: ElectionSettings = ElectionSettings()
    retention_s: float = Field(default=86_400.0, gt=0, le=_TEN_YEARS_S)
    """Raw samples that arrived longer ago are deleted, in small chunks."""
    retention_check_s: float = Field(default=30.0, gt=0, le=86_400)
    retention_chunk_rows: int = Field(default=5_000, ge=100)
    batch_max_rows: int = Field(default=4_000, ge=1)
    batch_max_delay_s: float = Field(default=0.25, gt=0, le=3600)
    """Unused since the writer commits whatever is waiting at once; kept so configs load."""
    queue_max: int = Field(default=100_000, ge=100)
    """At most this many validated messages wait for the writer; then the reader pauses.
    The queue holds units (a read cut in pieces of at most 64 messages and 1 MiB of
    payload, :data:`collector.ingest.reader.UNIT_MESSAGES` and ``UNIT_BYTES``): ``queue_max
    / 64`` of them, or ``queue_max_bytes / 1 MiB``, whichever is fewer. With the defaults
    the bytes bound is the one that holds: 256 units, at most 16,384 messages (~60 MB of
    3.8 KB 8-GPU samples), not 100,000."""
    queue_max_bytes: int = Field(default=256 << 20, ge=1 << 20)
    """... and at most this many bytes of payload (the memory bound): ``queue_max_bytes /
    1 MiB`` units of up to 64 messages each (see ``queue_max``)."""
    max_nodes: int = Field(default=DEFAULT_MAX_NODES, ge=1, le=1_000_000)
    """The most nodes this collector tracks (its live view and store watermarks; ~10 KB of
    memory each). A message of a new node past it is rejected as ``fleet_full`` (counted,
    quarantined, acknowledged), so a flood of invented node names (a broker that lets any
    client write any node's topics) grows neither the store nor the memory. Set it above
    the site's node count."""
    ingest_budget: NodeBudget = NodeBudget()
    """What one node may send: ``messages_per_s``, ``bytes_per_s`` (averages) and
    ``burst_s`` (seconds of them at once); a message over it is rejected as
    ``rate_limited`` before it is decoded (counted, quarantined, acknowledged), so one node
    flooding the collector cannot slow the others' ingest (:mod:`shared.budget`). Agents
    replay their spool at half their own ``ingest_budget``: give both the same values.
    After a time the collector was not reading (stopped, disconnected), each node may send
    its budget over that time more while the broker's backlog drains."""
    max_clock_skew_s: float = Field(default=300.0, gt=0, le=30 * 86_400)
    """A sample stamped further ahead of the collector's clock is rejected as clock_skew."""
    quarantine_max_rows: int = Field(default=10_000, ge=100)
    """Rejected messages kept for `collector query --rejected` (the newest)."""
    watermark_interval_s: float = Field(default=1.0, ge=0, le=3600)
    """How often each node's store watermark is published when it changed (retained, on
    ``capwatch/v1/watermarks/<node>``); agents keep spooled samples until it passes them.
    0: never published (agents then forget samples at the broker's PUBACK)."""
    watermark_hole_s: float = Field(default=300.0, gt=0, le=86_400)
    """A hole in a node's stored seqs that its agent has not filled this long after the
    first sample above it is given up (the agent no longer has those samples)."""
    sqlite_synchronous: Literal["full", "normal"] = "full"
    """full: an acknowledged sample survives a power cut; normal: only a process crash."""
    compress_payloads: bool = True
    """Store sample payloads zstd-compressed with a dictionary trained on them (~20x smaller
    than their JSON, ~3 us per sample in the writer thread; :mod:`collector.store.codec`)."""
    expected_interval_s: float = Field(default=DEFAULT_INTERVAL_S, gt=0, le=3600)
    """The sampling interval of a node that has not sampled yet."""
    stale_intervals: float = Field(default=DEFAULT_STALE_INTERVALS, gt=0, le=1000)
    """A node with no sample for this many of its intervals is stale: for the alert rules,
    governance, capacity, ``/metrics`` and every command (:mod:`collector.nodefacts`). An
    interval shorter than ``alerts.eval_interval_s`` counts as that: a node claiming 10 ms
    is stale after 3 s with the defaults, not 30 ms."""

    @model_validator(mode="before")
    @classmethod
    def _old_stale_intervals(cls, data: Any) -> Any:
        # ``alerts.stale_intervals`` (the rules' and governance's key until there was one)
        # stands for the top-level key when that is not given; ``setting_warnings`` says so.
        if not isinstance(data, dict) or "stale_intervals" in data:
            return data
        alerts = data.get("alerts")
        old = (
            alerts.get("stale_intervals")
            if isinstance(alerts, dict)
            else getattr(alerts, "stale_intervals", None)
        )
        return data if old is None else {**data, "stale_intervals": old}

    def staleness(self) -> Staleness:
        """When a node is stale, for every consumer: a node's interval is believed down to
        the rules' evaluation interval (:mod:`collector.nodefacts`)."""
        return Staleness(
            self.stale_intervals, self.expected_interval_s, self.alerts.eval_interval_s
        )

    def setting_warnings(self) -> list[str]:
        """One line per setting that is read but replaced (the entry point prints them)."""
        old = self.alerts.stale_intervals
        if old is None:
            return []
        if old != self.stale_intervals:
            return [
                f"setting 'alerts.stale_intervals' ({old:g}) is replaced by the top-level "
                f"'stale_intervals', which is also set and wins ({self.stale_intervals:g}): "
                "remove 'alerts.stale_intervals'"
            ]
        return [
            "setting 'alerts.stale_intervals' is replaced by the top-level 'stale_intervals' "
            "(one value for the rules, governance, capacity, /metrics and the commands): "
            "move it there"
        ]

    sd_target_hosts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SD_TARGET_HOSTS), max_length=256
    )
    """The hosts a node may announce as its ``metrics_address`` for ``/sd`` (Prometheus scrapes
    what ``/sd`` lists: a node naming any host could point Prometheus at an internal
    service). Each entry an IP network (``10.1.0.0/16``, ``fd00::/64``: an IP address host
    must be inside one), or a DNS name pattern with ``*`` and ``?``, case-insensitive, in
    which ``{node}`` stands for the announcing node's id. Default: the node's own name or a
    name under it (``{node}``, ``{node}.*``: the agent's default, its FQDN); narrow it to
    ``{node}.cluster.example``. A refused target is left out, counted
    (``capwatch_collector_sd_targets_refused``) and logged once per node and address
    (:mod:`collector.sdtargets`). Env ``CAPWATCH_SD_TARGET_HOSTS='["{node}", "10.1.0.0/16"]'``."""
    metrics_ready_commit_s: float = Field(default=30.0, ge=5, le=3600)
    """``/readyz`` says unready, and the watchdog stops its pings, when the writer has not
    committed for this long or the evaluator is this late (:mod:`collector.health`)."""

    @field_validator("sd_target_hosts")
    @classmethod
    def _target_hosts(cls, value: list[str]) -> list[str]:
        TargetHosts(value)  # its ValueError names the entry and the fix
        return value

    rollups: RollupSettings = RollupSettings()
    """Rollups kept beyond the raw samples, and the usage ledger (``[rollups]``)."""
    billing: BillingSettings = BillingSettings()
    """Prices of GPU-hours and energy for ``collector usage`` (``[billing]``)."""
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

    capacity: CapacitySettings = CapacitySettings()
    """Live headroom under the site's cap (``[capacity] plan = "site.toml"``)."""
    redfish: RedfishSettings = RedfishSettings()
    """BMCs polled out of band for their nodes' input power (``[[redfish.bmcs]]``)."""
    pdus: PdusSettings = PdusSettings()
    """Rack PDUs read over SNMP for their racks' draw (``[[pdus.units]]``)."""

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

    alertmanagers: list[AlertmanagerSettings] = Field(default=[], max_length=16)
    """Alertmanagers that get every alert pushed (``[[alertmanagers]]`` tables)."""
    inhibit_rules: list[InhibitRuleSettings] | None = Field(default=None, max_length=64)
    """``[[inhibit_rules]]``; unset: NodeOffline mutes its node's other alerts."""

    @model_validator(mode="after")
    def _unique_alertmanager_names(self) -> CollectorSettings:
        names = [a.name for a in self.alertmanagers] + [r.name for r in self.receivers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(
                f"setting 'alertmanagers' reuses names {dupes}: give each [[alertmanagers]] "
                "and [[receivers]] table its own name",
                field="alertmanagers",
            )
        return self

    def alert_inhibit_rules(self) -> tuple[InhibitRule, ...]:
        """The inhibit rules in force: those configured, or the default one."""
        from collector.alerts.route import parse_matcher  # noqa: PLC0415
        from collector.alerts.silence import (  # noqa: PLC0415
            DEFAULT_INHIBIT_RULES,
            InhibitRule,
        )

        if self.inhibit_rules is None:
            return DEFAULT_INHIBIT_RULES
        return tuple(
            InhibitRule(
                tuple(parse_matcher(m) for m in r.source_matchers),
                tuple(parse_matcher(m) for m in r.target_matchers),
                tuple(r.equal),
            )
            for r in self.inhibit_rules
        )

    def alert_routes(self) -> list[Route]:
        """The routes in force: those configured, or the default route."""
        from collector.alerts.route import default_route  # noqa: PLC0415

        names = [r.name for r in self.receivers]
        if not self.routes:
            return [default_route(names)]
        return [r.route(names) for r in self.routes]

    @property
    def session_client_id(self) -> str:
        """The client id the broker keeps the collector's session under.

        Alone, ``capwatch-collector`` by default (as always: a default that changed would
        leave the old session's queue behind). In a share group each member needs its own
        session, so the default names the host and the instance; a site that moves a
        member to another host sets ``client_id`` (or the username) so that the session,
        and what the broker holds in it, follows."""
        if self.client_id or self.mqtt.username:
            return self.client_id or self.mqtt.username or ""
        if self.mqtt.share_group is None:
            return "capwatch-collector"
        return f"capwatch-collector-{default_node_id()}-{self.instance}"

    def election_url(self) -> str | None:
        """The PostgreSQL URL the collectors elect their leader through, ``None`` when this
        collector always leads (a SQLite store and no ``election.url``)."""
        if self.election.url is not None:
            return self.election.url.get_secret_value()
        return self.store.url  # a PostgreSQL store: its own database (no password in it)
