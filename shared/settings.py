"""Settings: defaults < TOML file (``--config``) < ``CAPWATCH_*`` env vars < command-line flags.

Each entry point builds its settings object once with :func:`load_settings` and passes it
down; nothing below the entry point reads the environment. Nested fields use ``__`` in env
vars: ``CAPWATCH_MQTT__HOST=broker.example``.
"""

from __future__ import annotations

import socket
import ssl
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shared.errors import ConfigError

__all__ = [
    "CapwatchSettings",
    "MqttSettings",
    "format_validation_error",
    "load_settings",
]


class MqttSettings(BaseModel):
    """How to reach the broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    tls_ca_file: Path | None = None
    """CA bundle; setting it turns TLS on."""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    def tls_context(self) -> ssl.SSLContext | None:
        """An SSL context when a CA file is configured, else ``None`` (plain TCP)."""
        if self.tls_ca_file is None:
            return None
        try:
            ctx = ssl.create_default_context(cafile=str(self.tls_ca_file))
            if self.tls_cert_file is not None:
                ctx.load_cert_chain(
                    str(self.tls_cert_file), self.tls_key_file and str(self.tls_key_file)
                )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"mqtt TLS files cannot be loaded: {exc} (check mqtt.tls_ca_file / "
                "tls_cert_file / tls_key_file)",
                field="mqtt.tls_ca_file",
            ) from exc
        return ctx


class CapwatchSettings(BaseSettings):
    """Base of the agent's and the collector's settings."""

    model_config = SettingsConfigDict(
        env_prefix="CAPWATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mqtt: MqttSettings = MqttSettings()
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
    log_json: bool | None = None
    """``None``: JSON when stderr is not a terminal."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def default_node_id() -> str:
    """The short hostname, which is what operators name nodes by."""
    return socket.gethostname().split(".")[0] or "localhost"


_S = TypeVar("_S", bound=CapwatchSettings)


def format_validation_error(exc: ValidationError, *, hint: str = "") -> ConfigError:
    """Turn pydantic's report into one line naming the first bad field."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "settings"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        msg = f"unknown setting {field!r}: remove it or check its spelling"
    else:
        msg = f"setting {field!r} = {value!r}: {err['msg']}"
    if hint:
        msg = f"{msg} ({hint})"
    return ConfigError(msg, field=field)


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


def load_settings(
    cls: type[_S], *, config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> _S:
    """Build settings from file, env and flag ``overrides`` (``None`` values are ignored).

    Raises :class:`ConfigError` with one line naming the field on any bad value.
    """
    target: type[_S] = cls
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(
                f"config file {str(config_file)!r} does not exist: pass an existing TOML file to "
                "--config",
                field="config",
            )
        try:
            with config_file.open("rb") as fh:
                tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"config file {str(config_file)!r} is not valid TOML: {exc}", field="config"
            ) from exc
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
    try:
        return target(**_drop_none(overrides or {}))
    except ValidationError as exc:
        hint = "fix it in the --config file, the CAPWATCH_* environment or the flag"
        raise format_validation_error(exc, hint=hint) from exc
