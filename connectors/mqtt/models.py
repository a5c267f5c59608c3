"""Provisioning documents (service groups and devices) as iotagent-node-lib takes them.

Unknown members (``cbroker``, ``trust``, ``timezone`` ...) are kept and returned as
given, so existing provisioning scripts round-trip; only what the agent acts on is
typed here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AttributeMapping(BaseModel):
    """``object_id`` (the key in the device's payload) -> entity attribute ``name``/``type``."""

    model_config = ConfigDict(extra="allow")

    object_id: str | None = None
    name: str = Field(min_length=1)
    type: str = "Property"
    metadata: dict[str, Any] | None = None
    #: JEXL: the value sent is the expression's, evaluated on the measure (``expressions``)
    expression: Any = None
    #: the attribute is not sent when the expression gives this value (default: null)
    skipValue: Any = None
    reverse: Any = None
    #: multi-entity measures: the value goes to this entity (of ``entity_type``) instead
    entity_name: str | None = None
    entity_type: str | None = None

    @property
    def key(self) -> str:
        return self.object_id or self.name


class StaticAttribute(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    type: str = "Property"
    value: Any = None
    metadata: dict[str, Any] | None = None


class Command(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    type: str = "command"
    object_id: str | None = None


class _Provisioned(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    entity_type: str | None = None
    attributes: list[AttributeMapping] = Field(default_factory=list)
    lazy: list[AttributeMapping] = Field(default_factory=list)
    static_attributes: list[StaticAttribute] = Field(default_factory=list)
    commands: list[Command] = Field(default_factory=list)
    #: ``MQTT`` (the default) or ``HTTP``: how commands reach the devices
    transport: str | None = None
    #: true/false, or a JEXL expression giving a boolean or a list of attribute names
    #: (and ``{object_id: ...}`` objects), as iotagent-node-lib takes it
    explicitAttrs: bool | str | None = None
    timestamp: bool | None = None

    @field_validator("entity_type")
    @classmethod
    def _type_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("entity_type cannot be empty")
        return value


class Group(_Provisioned):
    """A service group (``/iot/groups``, formerly ``/iot/services``): one apikey."""

    apikey: str = Field(min_length=1)
    resource: str = ""
    entityNameExp: str | None = None
    autoprovision: bool | None = None

    @field_validator("apikey")
    @classmethod
    def _apikey_topic_safe(cls, value: str) -> str:
        # a level of the devices' MQTT topics, and a Mosquitto user name
        if any(c in value for c in "/+#:\x00") or value != value.strip():
            raise ValueError("apikey cannot contain '/', '+', '#', ':', NUL or outer spaces")
        return value


class Device(_Provisioned):
    device_id: str = Field(min_length=1)
    entity_name: str | None = None
    apikey: str | None = None
    protocol: str | None = None
    #: HTTP devices: where commands are pushed (without it, the device polls for them)
    endpoint: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("endpoint must be an http:// or https:// URL")
        return value

    @field_validator("transport")
    @classmethod
    def _transport(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in ("MQTT", "HTTP"):
            raise ValueError("transport must be MQTT or HTTP")
        return value

    @field_validator("device_id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if any(c in value for c in "/+#\x00"):
            raise ValueError("device_id cannot contain '/', '+', '#' or NUL")
        return value


def dump(model: BaseModel) -> dict[str, Any]:
    """The document as stored and listed: what the client gave, without unset defaults."""
    return model.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
