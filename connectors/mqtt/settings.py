"""IoT agent settings: one pydantic-settings class, built at start-up by ``get_settings``.

Every field can be set from the environment with the ``RENKEI_`` prefix
(``RENKEI_MQTT_URL``, ``RENKEI_BROKER_URL``, ``RENKEI_IOTA_PORT`` ...); the CLI passes
its options as overrides, so a flag wins over the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broker.shared import DEFAULT_DENY, Rules

ListSetting = Annotated[list[str], NoDecode]


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RENKEI_", extra="ignore")

    #: ``mqtt(s)://[user[:password]@]host[:port]``; credentials never appear in logs.
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    #: ``auto`` speaks MQTT 5 (shared subscriptions) and falls back to 3.1.1 when refused.
    mqtt_version: Literal["auto", "mqtt5.0", "mqtt3.1.1"] = "auto"
    #: CA bundle (PEM) for ``mqtts://`` (system CAs when unset).
    mqtt_ca_file: str | None = None
    #: MQTT client id; stable by default so a restarted agent resumes its session.
    mqtt_client_id: str | None = None
    #: Group name of the MQTT 5 shared subscriptions (``$share/<group>/...``).
    mqtt_share_group: str = "renkei"

    broker_url: str = "http://127.0.0.1:1026"
    #: The agent's own credentials at the broker (``X-API-Key``, or a bearer token);
    #: never logged. Without them, ``RENKEI_API_KEY`` / ``RENKEI_TOKEN`` as for clients.
    broker_api_key: SecretStr | None = None
    broker_token: SecretStr | None = None

    #: Access control of the provisioning API: the broker's auth file (same format);
    #: none: open, and then only on a loopback address unless ``insecure_no_auth``.
    auth_file: Path | None = None
    #: Audit log (JSON lines) of provisioning changes and refusals (may be the broker's).
    audit_log: Path | None = None
    insecure_no_auth: bool = False

    iota_host: str = "127.0.0.1"
    iota_port: int = Field(default=4041, ge=1, le=65535)
    #: URL the broker reaches the agent at: the endpoint of its registrations, or of its
    #: command notifications (``http://HOST:PORT`` by default).
    iota_public_url: str | None = None
    #: Secret the broker sends with every request to the agent: in the headers its
    #: registrations' ``contextSourceInfo`` name, or with command notifications
    #: (``receiverInfo`` of its subscriptions). When unset: derived from
    #: ``broker_api_key`` (replicas with the same key and public URL agree), else made
    #: once and kept in ``iota_db``.
    iota_notify_token: SecretStr | None = None
    #: SQLite file holding provisioned groups and devices.
    iota_db: str = "./renkei-iota.db"
    #: Measures are coalesced into one batch write per window ...
    iota_window_ms: float = Field(default=50.0, gt=0)
    #: ... or as soon as this many entities are waiting.
    iota_window_entities: int = Field(default=500, ge=1)
    #: Measures held in memory while the broker is slow or down; QoS 0 beyond it is dropped.
    iota_buffer: int = Field(default=20_000, ge=1)
    #: Whether unknown devices of a known apikey are provisioned, when the group does not say.
    iota_autoprovision: bool = True
    #: What the agent writes: NGSI-LD entities (``ld``), or the NGSI v2 entities
    #: iotagent-json writes with ``IOTA_CB_NGSI_VERSION=v2`` (``v2``, through ``/v2``).
    iota_ngsi: Literal["ld", "v2"] = "ld"
    #: How the agent learns of commands, and whether it serves lazy attributes:
    #: ``registration`` (it registers its devices' commands and lazy attributes at the
    #: broker as their context source, as iotagent-node-lib does for NGSI-LD; the
    #: broker's key for the agent needs ``admin``), ``subscription`` (a broker
    #: subscription per command; no lazy attributes), or ``auto``: registration with
    #: ``iota_ngsi=ld``, subscription with ``v2`` (the broker forwards NGSI-LD requests
    #: only).
    iota_command_mode: Literal["auto", "registration", "subscription"] = "auto"
    #: Largest request body the agent reads (bytes); larger ones get 413. 1 MiB, as
    #: iotagent-node-lib's default (``IOTA_EXPRESS_LIMIT``).
    iota_max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    #: Devices (or groups) one provisioning request may carry; more get 400.
    iota_max_devices: int = Field(default=1000, gt=0)

    #: Outbound policy for HTTP push commands (the broker's settings of the same names):
    #: only these destinations when set, never these (comma-separated rules).
    outbound_allow: ListSetting = Field(default_factory=list)
    outbound_deny: ListSetting = Field(default_factory=lambda: list(DEFAULT_DENY))

    log_level: str = "info"

    @field_validator("outbound_allow", "outbound_deny", mode="before")
    @classmethod
    def _rule_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("outbound_allow", "outbound_deny")
    @classmethod
    def _valid_rules(cls, value: list[str]) -> list[str]:
        Rules.parse(value)  # raises ValueError naming a rule it cannot read
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str) -> str:
        if not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError("mqtt_url must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        return value

    @field_validator("mqtt_ca_file")
    @classmethod
    def _readable_ca(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"mqtt_ca_file {value!r} is not a readable file")
        return value

    @field_validator("broker_api_key", "broker_token", "iota_notify_token", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("broker_url")
    @classmethod
    def _http_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("broker_url must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _registrations_are_ngsi_ld(self) -> AgentSettings:
        if self.iota_command_mode == "registration" and self.iota_ngsi == "v2":
            raise ValueError(
                "iota_command_mode=registration needs iota_ngsi=ld: the broker forwards"
                " NGSI-LD requests to context sources, not NGSI v2 ones"
            )
        return self

    @property
    def command_mode(self) -> Literal["registration", "subscription"]:
        """``iota_command_mode`` with ``auto`` decided."""
        if self.iota_command_mode != "auto":
            return self.iota_command_mode
        return "subscription" if self.iota_ngsi == "v2" else "registration"

    @property
    def public_url(self) -> str:
        return (self.iota_public_url or f"http://{self.iota_host}:{self.iota_port}").rstrip("/")

    @property
    def client_id(self) -> str:
        return self.mqtt_client_id or f"renkei-iota-{self.iota_port}"


def get_settings(**overrides: Any) -> AgentSettings:
    """Settings from the environment, with the non-None ``overrides`` on top."""
    return AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
