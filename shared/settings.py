"""Settings: defaults < TOML file (``--config``) < ``CAPWATCH_*`` env vars < command-line flags.

Each entry point builds its settings object once with :func:`load_settings` and passes it
down; nothing below the entry point reads the environment. Nested fields use ``__`` in env
vars: ``CAPWATCH_MQTT__HOST=broker.example``.

Secrets (``mqtt.password``) are :class:`pydantic.SecretStr`: ``repr()``, logs and every error
this module raises show ``**********``; only :meth:`MqttSettings.password_value` hands the
text out, to the MQTT client.
"""

from __future__ import annotations

import difflib
import functools
import json
import socket
import ssl
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from shared.durations import DurationError, parse_duration
from shared.errors import ConfigError
from shared.files import TOO_DEEP, FileTooLargeError, parse_toml, read_bounded
from shared.text import QUOTED_MOST, quoted
from shared.urls import has_password, redact

__all__ = [
    "CapwatchSettings",
    "DurationText",
    "MqttSettings",
    "format_validation_error",
    "load_settings",
    "wrong_scalar_types",
]


def _duration_text(value: str) -> str:
    try:
        parse_duration(value)
    except DurationError as exc:
        # The same reason and fix as on the command line; format_validation_error adds the
        # field and the value.
        raise PydanticCustomError(
            "duration", "not a duration: {reason}; {fix}", {"reason": exc.reason, "fix": exc.fix}
        ) from None
    return value


DurationText = Annotated[str, AfterValidator(_duration_text)]
"""A duration setting written as text (``group_wait = "1h30m"``), kept as written; checked
against :mod:`shared.durations`' grammar, which :func:`shared.durations.parse_duration` reads."""


class MqttSettings(BaseModel):
    """How to reach the broker.

    TLS is on when :attr:`tls` is true or any of the three TLS files is set (a client
    certificate alone must not leave the password in clear text); see :meth:`tls_context`.
    """

    # hide_input_in_errors: pydantic's own ValidationError text (a traceback, a chained
    # exception) would otherwise quote the whole input, password included.
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    """Shown as ``**********`` everywhere; :meth:`password_value` gives the text."""
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    tls: bool = False
    """TLS even without any file below: the system trust store then verifies the broker."""
    tls_ca_file: Path | None = None
    """CA bundle (PEM) that verifies the broker; unset with TLS on: the system trust store."""
    tls_cert_file: Path | None = None
    """Client certificate (PEM), for a broker with ``require_certificate true``."""
    tls_key_file: Path | None = None
    """Its private key (PEM, unencrypted); unset: the key is in ``tls_cert_file``."""
    reconnect_min_s: float = Field(default=0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(default=5.0, gt=0, le=3600)
    """Longest wait between reconnect attempts: back within a few seconds of the broker's
    return; the draws are jittered, so a fleet's agents spread over those seconds."""

    @model_validator(mode="after")
    def _host_is_a_name(self) -> Self:
        # paho refuses an empty host only when it connects ("Invalid host.": the agent's
        # traceback), and a blank or spaced one is a DNS lookup that fails at every retry.
        if not self.host or any(c.isspace() for c in self.host):
            raise ConfigError(
                f"setting 'mqtt.host' = {self.host!r} is not a host: give the broker's DNS name "
                "or IP address (--host, CAPWATCH_MQTT__HOST), e.g. 127.0.0.1",
                field="mqtt.host",
            )
        return self

    @model_validator(mode="after")
    def _password_needs_a_username(self) -> Self:
        if self.password is not None and self.username is None:
            raise ConfigError(
                "setting 'mqtt.password' is set but 'mqtt.username' is not: MQTT sends a "
                "password only with a username; set mqtt.username (CAPWATCH_MQTT__USERNAME)",
                field="mqtt.username",
            )
        return self

    @model_validator(mode="after")
    def _key_needs_a_certificate(self) -> Self:
        # ConfigError (not ValueError) passes through pydantic unchanged: one line, our words.
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ConfigError(
                "setting 'mqtt.tls_key_file' is set but 'mqtt.tls_cert_file' is not: set "
                "tls_cert_file to the client certificate that goes with this key, or remove "
                "tls_key_file",
                field="mqtt.tls_key_file",
            )
        return self

    @property
    def tls_enabled(self) -> bool:
        """Whether connections use TLS (``tls`` or any TLS file set)."""
        return self.tls or any(
            f is not None for f in (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        )

    def password_value(self) -> str | None:
        """The password in clear text, for the MQTT client only; ``None`` when unset."""
        return None if self.password is None else self.password.get_secret_value()

    def tls_context(self) -> ssl.SSLContext | None:
        """The SSL context to connect with, ``None`` when TLS is off (plain TCP).

        Built once per process for a given set of files and shared by every later call
        (each reconnect): a file replaced later (a renewed certificate) is read at the next
        start. Raises :class:`ConfigError` naming the setting when a file is missing or
        unusable.
        """
        if not self.tls_enabled:
            return None
        return _tls_context(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)


@functools.lru_cache(maxsize=16)
def _tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A verifying client context (lru_cache: a raised error is not cached, a context is)."""
    for name, path in (("tls_ca_file", ca), ("tls_cert_file", cert), ("tls_key_file", key)):
        if path is not None and not path.is_file():
            raise ConfigError(
                f"setting 'mqtt.{name}' = {str(path)!r}: no such file; point it at an existing "
                "PEM file or remove the setting",
                field=f"mqtt.{name}",
            )
    try:
        # Verifies the broker's certificate and its name (check_hostname), TLS 1.2 or newer.
        ctx = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"setting 'mqtt.tls_ca_file' = {str(ca)!r} cannot be loaded ({_reason(exc)}): it "
            "must be the PEM certificate of the CA that signed the broker's certificate",
            field="mqtt.tls_ca_file",
        ) from exc
    if cert is not None:
        try:
            ctx.load_cert_chain(
                str(cert), None if key is None else str(key), password=_no_passphrase
            )
        except (OSError, ssl.SSLError) as exc:
            if key is None:
                msg = (
                    f"setting 'mqtt.tls_cert_file' = {str(cert)!r} cannot be loaded "
                    f"({_reason(exc)}): it must hold the PEM certificate and its private key, "
                    "or set mqtt.tls_key_file to the key's file"
                )
                field = "mqtt.tls_key_file"  # the fix: name the key's file
            else:
                msg = (
                    f"settings 'mqtt.tls_cert_file' = {str(cert)!r} and 'mqtt.tls_key_file' = "
                    f"{str(key)!r} cannot be loaded ({_reason(exc)}): both must be PEM, the key "
                    "unencrypted and belonging to the certificate"
                )
                field = "mqtt.tls_cert_file"
            raise ConfigError(msg, field=field) from exc
    return ctx


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal, or hang a daemon.
    raise ConfigError(
        "setting 'mqtt.tls_key_file': the private key is encrypted and capwatch cannot ask for "
        "its passphrase: store it unencrypted (openssl pkey -in KEY -out KEY.new), readable "
        "only by the service",
        field="mqtt.tls_key_file",
    )


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror or str(exc)


class CapwatchSettings(BaseSettings):
    """Base of the agent's and the collector's settings: what both daemons read the same
    way (the broker, logging, their ``/metrics`` server)."""

    model_config = SettingsConfigDict(
        env_prefix="CAPWATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,  # inf or nan in a duration reaches int() somewhere: a traceback
    )

    mqtt: MqttSettings = MqttSettings()
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
    log_json: bool | None = None
    """``None``: JSON when stderr is not a terminal."""
    metrics_listen: str | None = None
    """``HOST:PORT`` to serve ``/metrics``, ``/healthz``, ``/readyz`` on (e.g.
    ``127.0.0.1:9474`` for the collector, ``0.0.0.0:9400`` for an agent); unset: no HTTP
    server. Flag ``--metrics-listen``, env ``CAPWATCH_METRICS_LISTEN``."""
    web_config_file: Path | None = None
    """TLS and basic auth of that server: a web config file in Prometheus exporter-toolkit's
    format (``tls_server_config``, ``basic_auth_users`` with bcrypt hashes; see
    shared/webconfig.py). Flag ``--web-config-file``, env ``CAPWATCH_WEB_CONFIG_FILE``."""

    @field_validator("metrics_listen")
    @classmethod
    def _listen_is_host_port(cls, value: str | None) -> str | None:
        if value is None:  # no server: its module (wsgiref, structlog) is not loaded
            return None
        from shared.metrics_http import check_listen  # noqa: PLC0415 (prometheus_client)

        return check_listen(value)

    @field_validator("web_config_file")
    @classmethod
    def _web_config_has_a_server(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # metrics_listen is declared (so validated) first: info.data holds it unless bad.
        if value is None:
            return None
        from shared.metrics_http import check_web_config  # noqa: PLC0415 (prometheus_client)

        return check_web_config(value, info.data.get("metrics_listen"))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(env_settings)]
        if settings_cls.model_config.get("toml_file"):
            sources.append(_TomlSource(settings_cls))
        return tuple(sources)


class _EnvSource(PydanticBaseSettingsSource):
    """The ``CAPWATCH_*`` environment, whose tables and lists given as JSON
    (``CAPWATCH_MQTT='{"port": true}'``) hold numbers as numbers, as the file does
    (:func:`wrong_scalar_types`): pydantic read that one as port 1, ``"1883"`` as 1883 and
    ``{"tls": "yes"}`` as true. A plain variable (``CAPWATCH_MQTT__PORT=1883``) is text,
    read as a number."""

    def __init__(self, env: PydanticBaseSettingsSource) -> None:
        super().__init__(env.settings_cls)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        try:  # json.loads of a table given as JSON recurses per level (both read it)
            data = self._env()
            errors = wrong_scalar_types(self.settings_cls, self._json_values())
        except RecursionError:
            raise SettingsError(f"a CAPWATCH_* variable's JSON is {TOO_DEEP}") from None
        if errors:
            raise ValidationError.from_exception_data(self.settings_cls.__name__, errors[:1])
        return data

    def _json_values(self) -> dict[str, Any]:
        """The variables written as a JSON object or array, decoded, each where its name
        puts it (``CAPWATCH_ALERTS__ROUTES='[...]'`` at ``alerts.routes``): those that
        pydantic-settings decodes for a table or a list (one that is no JSON it refuses)."""
        env = self._env
        prefix = str(env.config.get("env_prefix", "")).lower()
        delimiter = str(env.config.get("env_nested_delimiter") or "__")
        out: dict[str, Any] = {}
        for name, text in getattr(env, "env_vars", {}).items():
            if (
                not text
                or text.lstrip()[:1] not in ("{", "[")
                or not name.lower().startswith(prefix)
            ):
                continue
            try:
                value = json.loads(text)
            except ValueError:
                continue
            *tables, key = name.lower()[len(prefix) :].split(delimiter)
            at = out
            for table in tables:
                at = at.setdefault(table, {})
                if not isinstance(at, dict):
                    break
            else:
                at[key] = value
        return out


class _TomlSource(TomlConfigSettingsSource):
    """The ``--config`` file, whose tables must be tables even where a flag or the
    environment sets a key inside one: pydantic-settings merges the sources key by key, and
    a flag's ``{"mqtt": {"port": 1}}`` replaced the file's ``mqtt = 5`` unseen (the same file
    without the flag is refused)."""

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        # Read here, once, whatever the file is (load_settings checked that it exists and is
        # no folder): pydantic-settings reads regular files only, and a check read the
        # file first, so `--config /dev/stdin` or `--config <(envsubst < tmpl.toml)` (a
        # pipe) was read by the check alone: every setting silently at its default.
        return {} if files is None else _read_config(Path(str(files)))

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        fields = self.settings_cls.model_fields
        errors: list[InitErrorDetails] = [
            {"type": "dict_type", "loc": (key,), "input": value}
            for key, value in data.items()
            if key in fields and not isinstance(value, Mapping) and _is_table(fields[key])
        ]
        errors += wrong_scalar_types(self.settings_cls, data)
        if errors:
            raise ValidationError.from_exception_data(self.settings_cls.__name__, errors[:1])
        return data


_BOOLEAN_FOR_NUMBER = PydanticCustomError(
    "bool_for_number", "Input should be a number, not true or false: write the number"
)
_TEXT_FOR_NUMBER = PydanticCustomError(
    "str_for_number", "Input should be a number, not text: write the number without quotes"
)
_TEXT_FOR_BOOLEAN = PydanticCustomError(
    "str_for_bool", "Input should be true or false, not text: write true or false without quotes"
)
_NUMBER_FOR_BOOLEAN = PydanticCustomError(
    "number_for_bool", "Input should be true or false, not a number: write true or false"
)


def wrong_scalar_types(model: type[BaseModel], data: Mapping[str, Any]) -> list[InitErrorDetails]:
    """Where a typed document given to ``model`` (a TOML file, JSON) has ``true``/``false``
    or text for a number, or text or a number for a boolean, at any depth of its tables,
    lists and named tables (``[tenants.acme]``), as pydantic errors.

    pydantic's lax mode reads a boolean as the number 1 or 0 (``max_nodes = true`` became
    one node, ``retention_s = true`` one second of samples, a quota's ``nominal = true`` one
    GPU), a number's text as the number (``stale_intervals = "3"``) and ``"false"``,
    ``"yes"``, ``0`` or ``1`` as a boolean (``compress_payloads = "false"``), where a TOML
    file or JSON says which type it means. A plain environment variable is text, read as
    pydantic reads it (``CAPWATCH_COMPRESS_PAYLOADS=false``): not for this."""
    return _wrong_types_in(model, data, ())


def _wrong_types_in(
    annotation: Any, value: Any, loc: tuple[int | str, ...]
) -> list[InitErrorDetails]:
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # Annotated[float, Field(ge=0)]
        return _wrong_types_in(typing.get_args(annotation)[0], value, loc)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(annotation)
        if isinstance(value, bool | str | int | float):
            # The arms that can take a scalar (not None, a table or a list): none finds one
            # in it (float | DurationText: an arm takes the text), or the first one's.
            found = [_wrong_types_in(a, value, loc) for a in arms if _takes_a_scalar(a)]
            return [] if not all(found) else next(iter(found), [])
        # The first arm that finds one (a table's value is read against each table arm).
        return next((e for arm in arms if (e := _wrong_types_in(arm, value, loc))), [])
    if isinstance(value, bool):
        if _is_a_number(annotation):
            return [{"type": _BOOLEAN_FOR_NUMBER, "loc": loc, "input": value}]
        return []
    if isinstance(value, str | int | float) and _is_a_boolean(annotation):
        kind = _TEXT_FOR_BOOLEAN if isinstance(value, str) else _NUMBER_FOR_BOOLEAN
        return [{"type": kind, "loc": loc, "input": value}]
    if isinstance(value, str):
        if _is_a_number(annotation):
            return [{"type": _TEXT_FOR_NUMBER, "loc": loc, "input": value}]
        return []
    if origin in (list, tuple) and isinstance(value, list):
        item = typing.get_args(annotation)[0]
        return [e for i, v in enumerate(value) for e in _wrong_types_in(item, v, (*loc, i))]
    if origin is dict and isinstance(value, Mapping):
        item = typing.get_args(annotation)[1]
        return [e for k, v in value.items() for e in _wrong_types_in(item, v, (*loc, k))]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, Mapping):
            return []
        fields = {f.alias or name: f for name, f in annotation.model_fields.items()}
        return [
            e
            for k, v in value.items()
            if k in fields  # an unknown key: the model refuses it by name
            for e in _wrong_types_in(fields[k].annotation, v, (*loc, k))
        ]
    return []


def _is_a_number(annotation: Any) -> bool:
    """Whether ``annotation`` is an int or a float (not a bool), ``Annotated`` or not."""
    if typing.get_origin(annotation) is Annotated:
        return _is_a_number(typing.get_args(annotation)[0])
    return (
        isinstance(annotation, type)
        and issubclass(annotation, int | float)
        and annotation is not bool
    )


def _takes_a_scalar(annotation: Any) -> bool:
    """Whether ``annotation`` is no None, table (a model, a dict) or list, ``Annotated`` or
    not: an arm of a union that can take a number, a boolean or text."""
    if typing.get_origin(annotation) is Annotated:
        return _takes_a_scalar(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (list, tuple, dict, set, frozenset):
        return False
    return not (
        isinstance(annotation, type)
        and issubclass(annotation, BaseModel | Mapping | list | tuple | set | frozenset)
    ) and annotation is not type(None)


def _is_a_boolean(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Annotated:
        return _is_a_boolean(typing.get_args(annotation)[0])
    return annotation is bool


def _is_table(field: FieldInfo) -> bool:
    """Whether a settings field is one table (a nested settings model, not a list of them)."""
    annotation = field.annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def default_node_id() -> str:
    """The short hostname, which is what operators name nodes by."""
    return socket.gethostname().split(".")[0] or "localhost"


_S = TypeVar("_S", bound=CapwatchSettings)

_SECRET_TYPES = (SecretStr, SecretBytes)
_SECRET_WORDS = ("password", "secret", "token")


def _is_secret(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> bool:
    """Whether the value at ``loc`` is (inside) a secret: a ``Secret*`` field, or named so."""
    if any(isinstance(p, str) and any(w in p.lower() for w in _SECRET_WORDS) for p in loc):
        return True
    for part in loc:
        if isinstance(part, int):  # an item of a list of tables: same model
            continue
        if model is None or part not in model.model_fields:
            return False
        kinds = _leaf_types(model.model_fields[part].annotation)
        if any(issubclass(k, _SECRET_TYPES) for k in kinds):
            return True
        model = next((k for k in kinds if issubclass(k, BaseModel)), None)
    return False


def _leaf_types(annotation: Any) -> list[type]:
    """The classes in an annotation (``SecretStr | None`` -> ``[SecretStr, NoneType]``)."""
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple):
        return [t for arg in typing.get_args(annotation) for t in _leaf_types(arg)]
    return []


def _carries_password(value: str) -> bool:
    try:
        return has_password(value)
    except ValueError:  # no URL
        return False


_NOT_A_NUMBER: Final = frozenset(
    {"float_parsing", "int_parsing", "float_type", "int_type", "str_for_number"}
)
"""pydantic's errors for text that is no number where a number belongs."""


def format_validation_error(
    exc: ValidationError, *, hint: str = "", model: type[BaseModel] | None = None
) -> ConfigError:
    """Turn pydantic's report into one line naming the first bad field.

    The bad value is quoted unless it is a secret (a ``SecretStr`` field of ``model``, or any
    field named like a password) or a whole table, which may hold one.
    """
    err = exc.errors()[0]
    # A key of the input can be part of the field (a table's), and the message can echo
    # the value (a validator's ``{value!r}``): each quoted at most QUOTED_MOST characters.
    field = ".".join(_cut(str(p)) for p in err["loc"]) or "settings"
    value = err.get("input")
    if isinstance(value, str) and _carries_password(value):  # a URL in the wrong setting
        err["msg"] = err["msg"].replace(value, redact(value))  # a validator may echo it
        value = redact(value)
    if isinstance(value, str) and len(value) > QUOTED_MOST:
        err["msg"] = err["msg"].replace(repr(value), quoted(value))
    if err["type"] == "value_error":  # a validator's own words: not pydantic's prefix
        err["msg"] = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown setting {field!r}: remove it or check its spelling"
        if (close := _close_setting(model, err["loc"])) is not None:
            msg = f"{msg} (did you mean {close!r}?)"
    elif _is_secret(model, err["loc"]):
        msg = f"setting {field!r} (value hidden): {err['msg']}"
    elif isinstance(value, dict | list | tuple | set | BaseModel):
        msg = f"setting {field!r}: {err['msg']}"
    elif (
        isinstance(value, str)
        and err["type"] in _NOT_A_NUMBER
        and field.endswith("_s")
        and not _is_number_text(value)
    ):
        # retention_s = "5 minutes" (or "5m", as the flags' durations are written)
        msg = f"setting {field!r} = {quoted(value)}: give seconds as a number (300 for 5 minutes)"
    else:
        echo = quoted(value) if isinstance(value, str) else repr(value)
        msg = f"setting {field!r} = {echo}: {err['msg']}"
    if hint:
        msg = f"{msg} ({hint})"
    return ConfigError(msg, field=field)


def _close_setting(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> str | None:
    """The known setting nearest an unknown key at ``loc`` (``retention`` ->
    ``retention_s``: the flag is ``--retention``), dotted as the error names it; ``None``
    if none is close."""
    fields: dict[str, FieldInfo] = {} if model is None else model.model_fields
    for part in loc[:-1]:
        if isinstance(part, int):  # a list's item: the list's model is already in hand
            continue
        if part not in fields:
            return None
        inner = [t for t in _leaf_types(fields[part].annotation) if issubclass(t, BaseModel)]
        fields = inner[0].model_fields if inner else {}
    close = difflib.get_close_matches(str(loc[-1]), list(fields), n=1)
    return ".".join([*(str(p) for p in loc[:-1]), close[0]]) if close else None


def _cut(text: str) -> str:
    """A part of a field's name, cut as :func:`~shared.text.quoted` cuts a value."""
    return text if len(text) <= QUOTED_MOST else f"{text[:QUOTED_MOST]}..."


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            nested = _drop_none(v)
            if nested:
                out[k] = nested
        elif v is not None:
            out[k] = v
    return out


def _check_config_file(path: Path) -> None:
    """Raise :class:`ConfigError` (one line naming ``path`` and the fix) unless ``path`` is
    a file or a device to read (:func:`_read_config` reads it, once: a pipe has no second
    reading)."""
    name = repr(str(path))
    if not path.exists():
        raise ConfigError(
            f"config file {name} does not exist: pass an existing TOML file to --config",
            field="config",
        )
    if path.is_dir():
        raise ConfigError(
            f"config file {name} is a directory: pass a TOML file to --config", field="config"
        )


def _read_config(path: Path) -> dict[str, Any]:
    """The ``--config`` file's TOML, read once, or :class:`ConfigError` (one line naming
    ``path`` and the fix). A character device such as ``/dev/null`` is an empty file: no
    settings."""
    name = repr(str(path))
    try:
        return parse_toml(read_bounded(path).decode())
    except FileTooLargeError as exc:
        raise ConfigError(
            f"config file {name} {exc}: is it the settings file? (--config)", field="config"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"config file {name}: cannot read it ({exc.strerror}): give a file this user can read",
            field="config",
        ) from exc
    except UnicodeDecodeError as exc:
        # tomllib decodes the whole file first (TOML v1.0.0: "A TOML file must be a valid
        # UTF-8 encoded Unicode document").
        raise ConfigError(
            f"config file {name} is not UTF-8 text (byte {exc.start}): save it as UTF-8",
            field="config",
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {name} is not valid TOML: {exc}", field="config") from exc


def load_settings(
    cls: type[_S], *, config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> _S:
    """Build settings from file, env and flag ``overrides`` (``None`` values are ignored).

    Raises :class:`ConfigError` with one line naming the field on any bad value; the line
    never contains a secret's value.
    """
    target: type[_S] = cls
    if config_file is not None:
        _check_config_file(config_file)
        target = (
            type(  # a subclass that knows the file; pydantic-settings reads it from model_config
                cls.__name__,
                (cls,),
                {
                    "model_config": {**cls.model_config, "toml_file": config_file},
                    "__module__": cls.__module__,
                },
            )
        )
    hint = "fix it in the --config file, the CAPWATCH_* environment or the flag"
    try:
        return target(**_drop_none(overrides or {}))
    except ValidationError as exc:
        raise format_validation_error(exc, hint=hint, model=cls) from exc
    except SettingsError as exc:
        # A whole table given as one variable (CAPWATCH_MQTT=...) that is not JSON. The
        # message names the field and source, never the value.
        raise ConfigError(
            f"{exc}: set nested settings one variable each (CAPWATCH_MQTT__HOST=...) or give "
            "the table as a JSON object",
            field="settings",
        ) from exc
