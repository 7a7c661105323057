"""capwatch's exceptions.

Third-party errors are converted at the boundary (``raise StoreError(...) from exc``)::

    CapwatchError
    ├── ConfigError        a user's setting or flag is wrong: one line naming the field and the fix
    ├── SchemaError        a wire message failed validation (``reason``: not_json / invalid /
    │                      version / topic_mismatch)
    ├── StoreError         the store (SQLite or PostgreSQL) cannot be opened or written
    │   └── NotLeaderError a deposed leader's state change, refused by its fencing token
    ├── GpuBackendError    NVML failed in a way that is not "this node has no GPUs"
    ├── PlanError          a power plan is invalid (``field`` names the culprit)
    ├── MqttWireError      the collector's MQTT subscriber (collector/ingest/subscriber.py):
    │   ├── MqttConnectError     refused or unreachable (``return_code``)
    │   ├── MqttConnectionLost   the connection ended
    │   ├── MqttProtocolError    the broker sent something malformed
    │   └── MqttSubscribeError   a subscription was refused (``refused``)
    └── RedfishError       a BMC's Redfish answer gave no reading (``outcome``: auth / invalid
                           / out_of_range / ...; collector/redfish/poller.py)
"""

from __future__ import annotations

__all__ = [
    "CapwatchError",
    "ConfigError",
    "GpuBackendError",
    "MqttConnectError",
    "MqttConnectionLost",
    "MqttProtocolError",
    "MqttSubscribeError",
    "MqttWireError",
    "NotLeaderError",
    "PlanError",
    "RedfishError",
    "SchemaError",
    "StoreError",
]


class CapwatchError(Exception):
    """Base class of every error capwatch raises on purpose.

    ``exit_code``: what a command exits with when this error ends it (2: the user's mistake,
    fix the setting or flag and run again; systemd units do not restart on 2).
    """

    exit_code: int = 2


class ConfigError(CapwatchError):
    """A setting, flag or config file value is wrong.

    ``field`` names the setting; ``str(exc)`` is a full sentence with the fix.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SchemaError(CapwatchError):
    """A message on the wire does not match the schema.

    ``reason`` is a short machine-readable category used for counters.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(CapwatchError):
    """The store could not be opened, migrated or written.

    ``fatal`` is true when the store cannot take any write (disk full, I/O error, read-only,
    file gone); false when only the data of this write was refused, so the rest can be stored.
    ``unavailable`` (PostgreSQL) is true when the server could not be reached or went away
    (a restart, a failover): nothing of the write was committed, and it can be tried again
    on a new connection (the writer does; a write error that is ``unavailable`` is also
    ``fatal``, for a caller that cannot reconnect).
    ``exit_code`` is 2 when the user can fix it (a wrong path), 1 when a running store failed
    (a supervisor may restart the collector once the disk has room again).
    """

    def __init__(
        self,
        message: str,
        *,
        fatal: bool = True,
        exit_code: int = 2,
        unavailable: bool = False,
    ) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.unavailable = unavailable
        self.exit_code = exit_code


class NotLeaderError(StoreError):
    """A leader-only state change was refused: ``token`` no longer holds the lease (another
    collector took over, or the lease ended). The transaction is rolled back; not fatal: the
    collector goes on ingesting as a standby."""

    def __init__(self, message: str, *, token: int) -> None:
        super().__init__(message, fatal=False, exit_code=1)
        self.token = token


class GpuBackendError(CapwatchError):
    """NVML failed unexpectedly (not the normal "no GPU / no driver" case)."""


class PlanError(CapwatchError):
    """A power/fabric plan is invalid; ``field`` is the dotted path of the bad value, and
    ``source`` the file it is in, where one is known."""

    def __init__(self, message: str, *, field: str, source: str | None = None) -> None:
        super().__init__(f"{source}: {field}: {message}" if source else f"{field}: {message}")
        self.field = field
        self.message = message
        self.source = source

    def in_file(self, path: object) -> PlanError:
        """This error, naming the plan file ``path`` it is about."""
        return PlanError(self.message, field=self.field, source=str(path))


class MqttWireError(CapwatchError):
    """Base class of the errors :class:`MqttSubscriber` raises."""


class MqttConnectError(MqttWireError):
    """No session was established.

    ``return_code`` is the CONNACK return code when the broker refused (4: bad username or
    password, 5: not authorized, ...), ``None`` when TCP/TLS failed or nothing answered in time.
    """

    def __init__(self, message: str, *, return_code: int | None = None) -> None:
        super().__init__(message)
        self.return_code = return_code


class MqttConnectionLost(MqttWireError):  # noqa: N818 (the name the collector's brief fixed)
    """The connection ended: the broker closed it, the network failed, or keepalive expired."""


class MqttProtocolError(MqttWireError):
    """The broker sent a malformed packet, or one this subscriber does not handle (QoS 2)."""


class MqttSubscribeError(MqttWireError):
    """The broker answered a SUBSCRIBE with failure (0x80) for the filters in ``refused``."""

    def __init__(self, message: str, *, refused: list[str]) -> None:
        super().__init__(message)
        self.refused = refused


class RedfishError(CapwatchError):
    """A BMC's Redfish service answered, but not with a usable power reading.

    ``outcome`` is the poll outcome it is counted under (``auth``, ``http_error``,
    ``not_found``, ``invalid``, ``out_of_range``, ``no_reading``).
    """

    def __init__(self, message: str, *, outcome: str) -> None:
        super().__init__(message)
        self.outcome = outcome
