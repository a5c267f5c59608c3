"""Provisioned service groups and devices: kept in memory, written through to SQLite.

Provisioning is rare and measures are many, so every lookup on the message path
(apikey and device id -> :class:`Resolved`) is a dictionary hit; every change is
committed to the agent's own SQLite file before it is answered, so a restarted agent
knows its devices.

A group or device lives in a :class:`Scope` (``fiware-service`` /
``fiware-servicepath``); the service names the NGSI-LD tenant its entities go to.
Everything is keyed by tenant: the same apikey or device id in two tenants are two
groups or devices, and provisioning in one tenant never answers differently because
of what another holds. A message names only an apikey and a device id, so an apikey
whose groups or devices are in more than one tenant is ambiguous (:class:`Ambiguous`):
its messages go to none of them, unless the apikey is *pinned* to one tenant
(``pin``), as ``renkei iot mosquitto-acl`` does when it gives the apikey its Mosquitto
password: then only that tenant's devices receive its messages, whatever other tenants
provision.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from connectors.mqtt.errors import (
    AgentError,
    DeviceNotFound,
    DuplicateDevice,
    DuplicateGroup,
    GroupNotFound,
    NotImplementedYet,
    WrongSyntax,
)
from connectors.mqtt.expressions import Expression, ExpressionError, compile_expression
from connectors.mqtt.models import AttributeMapping, Device, Group, StaticAttribute, dump

DEFAULT_TYPE = "Thing"
#: Entities one device's ``entityNameExp`` may name and have served (commands, lazy
#: attributes) by the agent; measures naming more are still written, those entities
#: are not registered.
MAX_NAMED_ENTITIES = 1000
#: What an ``entityNameExp`` may read when a device is provisioned (no measure yet).
PROVISIONING_NAMES = frozenset({"id", "type", "service", "subservice", "staticAttributes"})


def entity_id_for(name: str, entity_type: str, ngsi_v2: bool = False) -> str:
    """An NGSI-LD id for a provisioned entity name: as given if a URI, else a URN, as
    iotagent-node-lib makes it; in NGSI v2 mode the name as it is."""
    if ngsi_v2:
        return name
    return name if ":" in name else f"urn:ngsi-ld:{entity_type}:{name}"


def expression_name(value: Any) -> str | None:
    """An expression's result as an entity name: a non-empty string or a number."""
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


@dataclass(frozen=True)
class Scope:
    service: str = ""
    subservice: str = "/"

    @property
    def tenant(self) -> str | None:
        return self.service or None

    @property
    def scope_path(self) -> str | None:
        """The service path as an NGSI-LD scope (``/floor1``); None for the root ``/``."""
        path = self.subservice.rstrip("/")
        if not path or any(c in path for c in "#*"):
            return None
        return path

    def covers(self, other: Scope) -> bool:
        """``/*`` and ``/#`` as servicepath select every subservice of the service."""
        return self.service == other.service and (
            self.subservice in ("/*", "/#") or self.subservice == other.subservice
        )


@dataclass
class Resolved:
    """Everything the message path needs about one device, computed once."""

    scope: Scope
    device_id: str
    apikey: str
    entity_id: str
    entity_type: str
    mappings: dict[str, AttributeMapping]
    static: list[StaticAttribute]
    commands: set[str]
    explicit: bool
    names: set[str] = field(default_factory=set)
    #: ``timestamp: true``: every measure also sets the entity's ``TimeInstant``
    timestamp: bool = False
    #: attributes with an ``expression``, in provisioning order (the order they run in)
    computed: list[tuple[AttributeMapping, Expression]] = field(default_factory=list)
    #: ``explicitAttrs`` given as an expression
    explicit_exp: Expression | None = None
    #: the group's ``entityNameExp``, for a device without an ``entity_name`` of its own
    name_exp: Expression | None = None
    #: ``MQTT`` or ``HTTP`` (upper case): how commands reach the device
    transport: str = "MQTT"
    #: HTTP devices: where commands are pushed (None: the device polls for them)
    endpoint: str | None = None
    #: the agent writes NGSI v2 entities (``--ngsi v2``): attributes carry their v2 type
    ngsi_v2: bool = False
    #: lazy attributes by the key a measure gives them under (``object_id`` or ``name``):
    #: kept by the agent and served to the broker, never written to it
    lazy: dict[str, AttributeMapping] = field(default_factory=dict)
    #: True for an entity the device's ``entityNameExp`` named from one of its measures
    #: (``Registry.note_entity``), rather than the device's own entity
    named: bool = False

    @property
    def tenant(self) -> str | None:
        return self.scope.tenant

    @property
    def scope_path(self) -> str | None:
        """The entity's NGSI-LD ``scope``: the service path, unless it is the root."""
        return self.scope.scope_path

    def context(self) -> dict[str, Any]:
        """What every expression of the device may read besides the measure."""
        return {
            "id": self.device_id,
            "entity_name": self.entity_id,
            "type": self.entity_type,
            "service": self.scope.service,
            "subservice": self.scope.subservice,
            "staticAttributes": [
                {"name": s.name, "type": s.type, "value": s.value} for s in self.static
            ],
        }


class Ambiguous(Exception):
    """An apikey (and device id) provisioned in more than one tenant: a message naming
    them cannot tell which tenant it belongs to."""

    def __init__(self, apikey: str, tenants: int) -> None:
        super().__init__(f"apikey {apikey!r} is provisioned in {tenants} services")
        self.apikey = apikey
        self.tenants = tenants


#: Seconds between two looks for pins another process (the CLI) wrote in the file.
PIN_REFRESH = 1.0


def _validate(model: type[Group] | type[Device], doc: Any, *, lazy: bool = False) -> Any:
    """``doc`` as a checked ``model``; ``lazy``: lazy attributes are served (the agent
    registers itself as their context source), else they are refused (501)."""
    if isinstance(doc, model):  # parsed (and checked) already
        return doc
    if not isinstance(doc, dict):
        raise WrongSyntax(f"each {model.__name__.lower()} must be a JSON object")
    try:
        obj = model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or model.__name__.lower()
        raise WrongSyntax(f"{model.__name__.lower()} {where}: {first['msg']}") from None
    if obj.lazy and not lazy:
        names = ", ".join(m.name for m in obj.lazy)
        raise NotImplementedYet(
            f"lazy attributes ({names}) are not supported with commands through"
            " subscriptions (RENKEI_IOTA_COMMAND_MODE=subscription, or --ngsi v2): they"
            " need the agent registered as their context source; provision them as active"
            " attributes and have the device publish them"
        )
    try:
        if isinstance(obj, Group) and obj.entityNameExp is not None:
            compile_expression(obj.entityNameExp, "entityNameExp")
        if isinstance(obj.explicitAttrs, str):
            compile_expression(obj.explicitAttrs, "explicitAttrs")
        for mapping in obj.attributes:
            if mapping.expression is not None:
                compile_expression(mapping.expression, f"attribute {mapping.name}")
    except ExpressionError as exc:
        raise WrongSyntax(str(exc)) from None
    for mapping in obj.attributes:
        if mapping.reverse is not None:
            raise NotImplementedYet(
                f"attribute {mapping.name}: reverse expressions are not supported"
            )
    return obj


def _doc_name(doc: Any) -> str:
    name = doc.get("device_id") if isinstance(doc, dict) else None
    return repr(name) if isinstance(name, str) else "(without device_id)"


def _group_key(apikey: str, resource: str) -> str:
    return f"{apikey}\x00{resource}"


class Registry:
    def __init__(self, path: str | Path, *, ngsi_v2: bool = False, lazy: bool = False) -> None:
        """``ngsi_v2``: devices without an ``entity_name`` are ``{type}:{device_id}``, as
        iotagent-node-lib names them for NGSI v2 (``urn:ngsi-ld:{type}:{device_id}``
        otherwise). ``lazy``: lazy attributes may be provisioned (see ``_validate``)."""
        self.path = str(path)
        self.ngsi_v2 = ngsi_v2
        self.lazy = lazy
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS provisioned (kind TEXT NOT NULL, service TEXT NOT NULL,"
            " subservice TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,"
            " PRIMARY KEY (kind, service, subservice, key))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS agent_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS apikey_pins (apikey TEXT PRIMARY KEY, service TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS named_entities (service TEXT NOT NULL,"
            " entity_id TEXT NOT NULL, subservice TEXT NOT NULL, device_id TEXT NOT NULL,"
            " PRIMARY KEY (service, entity_id))"
        )
        #: apikey -> the service its MQTT messages belong to (see the module docstring)
        self.pins: dict[str, str] = {}
        self._data_version: int | None = None
        self._pins_checked = 0.0
        self._lock = threading.Lock()
        self._refresh_pins(force=True)
        self.groups: dict[tuple[Scope, str], Group] = {}
        self.devices: dict[tuple[Scope, str], Device] = {}
        for kind, service, subservice, key, body in self._db.execute(
            "SELECT kind, service, subservice, key, body FROM provisioned ORDER BY rowid"
        ):
            scope = Scope(service, subservice)
            if kind == "group":
                self.groups[scope, key] = Group.model_validate(orjson.loads(body))
            else:
                self.devices[scope, key] = Device.model_validate(orjson.loads(body))
        #: (service, entity id) -> the device whose ``entityNameExp`` last named it
        self.named: dict[tuple[str, str], tuple[Scope, str]] = {
            (str(service), str(eid)): (Scope(str(service), str(subservice)), str(device_id))
            for service, eid, subservice, device_id in self._db.execute(
                "SELECT service, entity_id, subservice, device_id FROM named_entities"
            )
        }
        self._reindex()

    def close(self) -> None:
        self._db.close()

    # -- pins ---------------------------------------------------------------------------------

    def _refresh_pins(self, *, force: bool = False) -> None:
        """Read the pins again when another connection changed the file (at most once per
        ``PIN_REFRESH`` seconds): the CLI pins apikeys while the agent runs."""
        now = time.monotonic()
        if not force and now - self._pins_checked < PIN_REFRESH:
            return
        self._pins_checked = now
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return
            self._data_version = version
            rows = self._db.execute("SELECT apikey, service FROM apikey_pins").fetchall()
        self.pins = {str(a): str(s) for a, s in rows}

    def pin(self, apikey: str, service: str | None) -> None:
        """Pin ``apikey`` to ``service`` (None: unpin)."""
        with self._lock:
            if service is None:
                self._db.execute("DELETE FROM apikey_pins WHERE apikey = ?", (apikey,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO apikey_pins VALUES (?, ?)", (apikey, service)
                )
        if service is None:
            self.pins.pop(apikey, None)
        else:
            self.pins[apikey] = service

    def tenant_for(self, apikey: str) -> str | None:
        """The service the messages of ``apikey`` belong to: its pin, else the one service
        whose groups or devices use it; None when none does; ``Ambiguous`` when several
        do and it is not pinned."""
        self._refresh_pins()
        pinned = self.pins.get(apikey)
        if pinned is not None:
            return pinned
        tenants = self._tenants.get(apikey)
        if not tenants:
            return None
        if len(tenants) > 1:
            # about to refuse: a pin written a moment ago is worth a look (cheap when
            # nothing changed, and rare: only ambiguous apikeys come here)
            self._refresh_pins(force=True)
            pinned = self.pins.get(apikey)
            if pinned is not None:
                return pinned
            raise Ambiguous(apikey, len(tenants))
        return next(iter(tenants))

    def secret(self, name: str) -> str:
        """A random secret kept in the file: made on first use, the same afterwards."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO agent_secrets VALUES (?, ?)",
                (name, secrets.token_urlsafe(32)),
            )
            row = self._db.execute(
                "SELECT value FROM agent_secrets WHERE name = ?", (name,)
            ).fetchone()
        return str(row[0])

    # -- persistence --------------------------------------------------------------------------

    def _save(self, kind: str, scope: Scope, key: str, doc: Group | Device | None) -> None:
        with self._lock:
            if doc is None:
                self._db.execute(
                    "DELETE FROM provisioned WHERE kind=? AND service=? AND subservice=? AND key=?",
                    (kind, scope.service, scope.subservice, key),
                )
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO provisioned VALUES (?, ?, ?, ?, ?)",
                    (kind, scope.service, scope.subservice, key, orjson.dumps(dump(doc)).decode()),
                )

    def _reindex(self) -> None:
        self._by_apikey: dict[str, list[tuple[Scope, Group]]] = {}
        for (scope, _), group in self.groups.items():
            self._by_apikey.setdefault(group.apikey, []).append((scope, group))
        self._resolved: dict[tuple[str, str], list[Resolved]] = {}
        self._by_entity: dict[tuple[str, str], Resolved] = {}
        #: apikey -> the services whose groups or devices use it
        self._tenants: dict[str, set[str]] = {}
        for apikey, found in self._by_apikey.items():
            self._tenants.setdefault(apikey, set()).update(s.service for s, _ in found)
        own: dict[tuple[Scope, str], Resolved] = {}
        for scope, device_id in self.devices:
            res = self._resolve_device(scope, device_id)
            own[scope, device_id] = res
            self._by_entity[scope.service, res.entity_id] = res
            self._resolved.setdefault((res.apikey, device_id), []).append(res)
            if res.apikey:
                self._tenants.setdefault(res.apikey, set()).add(scope.service)
        #: the entities each device's ``entityNameExp`` named, by (scope, device id)
        self._named_by: dict[tuple[Scope, str], set[str]] = {}
        for (service, eid), owner in sorted(self.named.items()):
            base = own.get(owner)
            if base is not None and (service, eid) not in self._by_entity:
                self._by_entity[service, eid] = dataclasses.replace(base, entity_id=eid, named=True)
                self._named_by.setdefault(owner, set()).add(eid)

    # -- groups -------------------------------------------------------------------------------

    def parse_groups(self, docs: Iterable[Any]) -> list[Group]:
        """Validate group documents (``WrongSyntax``, ``NotImplementedYet``)."""
        return [_validate(Group, d, lazy=self.lazy) for d in docs]

    def _taken(self, scope: Scope, key: str) -> bool:
        """Whether a group of the same service has this apikey and resource (another
        tenant's groups are never looked at)."""
        return any(k == key and s.service == scope.service for (s, k) in self.groups)

    def add_groups(self, scope: Scope, docs: Iterable[Any]) -> list[Group]:
        groups = self.parse_groups(docs)
        keys = [_group_key(g.apikey, g.resource) for g in groups]
        if len(set(keys)) != len(keys):
            raise DuplicateGroup("the same apikey and resource appear twice in the request")
        for group, key in zip(groups, keys, strict=True):
            if self._taken(scope, key):
                raise DuplicateGroup(
                    f"a group with apikey {group.apikey!r} and resource {group.resource!r} exists"
                )
        for group, key in zip(groups, keys, strict=True):
            self._save("group", scope, key, group)
            self.groups[scope, key] = group
        self._reindex()
        return groups

    def list_groups(self, scope: Scope) -> list[Group]:
        return [g for (s, _), g in self.groups.items() if scope.covers(s)]

    def _find_group(self, scope: Scope, apikey: str | None, resource: str | None) -> str:
        if not apikey:
            raise WrongSyntax("the apikey query parameter is required")
        found = [
            k
            for (s, k), g in self.groups.items()
            if s == scope and g.apikey == apikey and (resource is None or g.resource == resource)
        ]
        if not found:
            raise GroupNotFound(f"no group with apikey {apikey!r} in this service")
        return found[0]

    def patched_group(
        self, scope: Scope, apikey: str | None, resource: str | None, patch: Any
    ) -> tuple[str, Group]:
        """The group a PUT names and what it becomes (not saved): ``(key, group)``."""
        key = self._find_group(scope, apikey, resource)
        if not isinstance(patch, dict):
            raise WrongSyntax("the body must be a JSON object")
        merged = {**dump(self.groups[scope, key]), **patch}
        group: Group = _validate(Group, merged, lazy=self.lazy)
        return key, group

    def update_group(
        self, scope: Scope, apikey: str | None, resource: str | None, patch: Any
    ) -> Group:
        key, group = self.patched_group(scope, apikey, resource, patch)
        return self.replace_group(scope, key, group)

    def replace_group(self, scope: Scope, key: str, group: Group) -> Group:
        """Put ``group`` in place of the group at ``key`` (from ``patched_group``)."""
        new_key = _group_key(group.apikey, group.resource)
        if new_key != key and self._taken(scope, new_key):
            raise DuplicateGroup(f"a group with apikey {group.apikey!r} exists")
        self._save("group", scope, key, None)
        del self.groups[scope, key]
        self._save("group", scope, new_key, group)
        self.groups[scope, new_key] = group
        self._reindex()
        return group

    def delete_group(self, scope: Scope, apikey: str | None, resource: str | None) -> None:
        key = self._find_group(scope, apikey, resource)
        self._save("group", scope, key, None)
        del self.groups[scope, key]
        self._reindex()

    def group_for(self, apikey: str) -> tuple[Scope, Group] | None:
        """The group of ``apikey`` in the service its messages belong to
        (``tenant_for``, which may raise ``Ambiguous``)."""
        tenant = self.tenant_for(apikey)
        for scope, group in self._by_apikey.get(apikey, []):
            if scope.service == tenant:
                return scope, group
        return None

    def tenants_of(self, apikey: str) -> set[str]:
        """The services whose groups or devices use ``apikey``."""
        return set(self._tenants.get(apikey, ()))

    def apikeys(self) -> list[str]:
        """Every apikey a group or device uses."""
        return sorted(self._tenants)

    # -- devices ------------------------------------------------------------------------------

    def parse_devices(
        self, docs: Iterable[Any]
    ) -> tuple[list[Device], list[tuple[str, AgentError]]]:
        """The devices of ``docs`` that validate, and (name, error) of the others."""
        devices: list[Device] = []
        refused: list[tuple[str, AgentError]] = []
        for doc in docs:
            try:
                devices.append(_validate(Device, doc, lazy=self.lazy))
            except (WrongSyntax, NotImplementedYet) as exc:
                refused.append((_doc_name(doc), exc))
        return devices, refused

    def add_devices(
        self,
        scope: Scope,
        docs: Iterable[Any],
        refused: list[tuple[str, AgentError]] | None = None,
    ) -> tuple[list[Resolved], AgentError | None]:
        """Provision the valid devices of ``docs``; the error of the others, if any.

        A device that does not validate (a bad expression, say) is refused alone, as
        iotagent-node-lib does, and the error names each refused device; the same
        device id twice, or one already provisioned, refuses the whole request.
        ``refused`` are devices ``parse_devices`` refused already, for the error.
        """
        devices, more = self.parse_devices(docs)
        refused = [*(refused or []), *more]
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            raise DuplicateDevice("the same device_id appears twice in the request")
        for dev in devices:
            if (scope, dev.device_id) in self.devices:
                raise DuplicateDevice(f"device {dev.device_id!r} already exists in this service")
        for dev in devices:
            self._save("device", scope, dev.device_id, dev)
            self.devices[scope, dev.device_id] = dev
        self._reindex()
        added = [self._resolve_device(scope, d.device_id) for d in devices]
        error: AgentError | None = None
        if refused:
            detail = "; ".join(f"device {name}: {exc.message}" for name, exc in refused)
            kept = f" ({len(added)} other devices provisioned)" if added else ""
            error = type(refused[0][1])(f"{detail}{kept}")
        return added, error

    def list_devices(self, scope: Scope) -> list[Device]:
        return [d for (s, _), d in self.devices.items() if scope.covers(s)]

    def get_device(self, scope: Scope, device_id: str) -> Device:
        dev = self.devices.get((scope, device_id))
        if dev is None:
            raise DeviceNotFound(f"no device {device_id!r} in this service")
        return dev

    def patched_device(self, scope: Scope, device_id: str, patch: Any) -> Device:
        """What a PUT makes of a device (not saved)."""
        current = self.get_device(scope, device_id)
        if not isinstance(patch, dict):
            raise WrongSyntax("the body must be a JSON object")
        if patch.get("device_id", device_id) != device_id:
            raise WrongSyntax("device_id cannot be changed")
        dev: Device = _validate(Device, {**dump(current), **patch}, lazy=self.lazy)
        return dev

    def update_device(self, scope: Scope, device_id: str, patch: Any) -> Resolved:
        dev = patch if isinstance(patch, Device) else self.patched_device(scope, device_id, patch)
        self.get_device(scope, device_id)
        self._save("device", scope, device_id, dev)
        self.devices[scope, device_id] = dev
        self._reindex()
        return self._resolve_device(scope, device_id)

    def delete_device(self, scope: Scope, device_id: str) -> None:
        self.get_device(scope, device_id)
        self._save("device", scope, device_id, None)
        del self.devices[scope, device_id]
        gone = [key for key, owner in self.named.items() if owner == (scope, device_id)]
        with self._lock:
            self._db.executemany(
                "DELETE FROM named_entities WHERE service = ? AND entity_id = ?", gone
            )
        for key in gone:
            del self.named[key]
        self._reindex()

    # -- message path -------------------------------------------------------------------------

    def _group_of(self, scope: Scope, dev: Device) -> Group | None:
        candidates = [g for (s, _), g in self.groups.items() if s == scope]
        if dev.apikey is not None:
            candidates = [g for g in candidates if g.apikey == dev.apikey]
        return candidates[0] if candidates else None

    def _resolve_device(self, scope: Scope, device_id: str) -> Resolved:
        return self.preview(scope, self.devices[scope, device_id])

    def preview(self, scope: Scope, dev: Device) -> Resolved:
        """``dev`` resolved against the groups of ``scope`` (provisioned or not): what
        its measures would write."""
        device_id = dev.device_id
        group = self._group_of(scope, dev)
        entity_type = dev.entity_type or (group.entity_type if group else None) or DEFAULT_TYPE
        mappings: dict[str, AttributeMapping] = {}
        for m in [*(group.attributes if group else []), *dev.attributes]:
            mappings[m.key] = m
        static = {
            s.name: s for s in [*(group.static_attributes if group else []), *dev.static_attributes]
        }
        commands = {c.name for c in [*(group.commands if group else []), *dev.commands]}
        lazy = {m.key: m for m in [*(group.lazy if group else []), *dev.lazy]}
        explicit_given = dev.explicitAttrs
        if explicit_given is None and group is not None:
            explicit_given = group.explicitAttrs
        explicit_exp = None
        if isinstance(explicit_given, str):
            explicit_exp = compile_expression(explicit_given, "explicitAttrs")
        computed = [
            (m, compile_expression(m.expression, f"attribute {m.name}"))
            for m in mappings.values()
            if m.expression is not None
        ]
        # iotagent-node-lib: "when using entityNameExp, the entity_name field in the device
        # provisioning is ignored" for measures; a device without one is named by the
        # expression when it is provisioned, if it can be evaluated without a measure
        name_exp = None
        if group is not None and group.entityNameExp:
            name_exp = compile_expression(group.entityNameExp, "entityNameExp")
        entity_id = None
        if dev.entity_name:  # an NGSI-LD id is a URI: a bare name becomes a URN
            entity_id = entity_id_for(dev.entity_name, entity_type, self.ngsi_v2)
        if entity_id is None and name_exp is not None and name_exp.names <= PROVISIONING_NAMES:
            entity_id = self._provisioned_name(name_exp, scope, dev, entity_type, static)
        if entity_id is None:
            entity_id = (
                f"{entity_type}:{device_id}"
                if self.ngsi_v2
                else f"urn:ngsi-ld:{entity_type}:{device_id}"
            )
        timestamp = dev.timestamp
        if timestamp is None:
            timestamp = bool(group.timestamp) if group else False
        return Resolved(
            scope=scope,
            device_id=device_id,
            apikey=dev.apikey or (group.apikey if group else ""),
            entity_id=entity_id,
            entity_type=entity_type,
            mappings=mappings,
            static=list(static.values()),
            commands=commands,
            explicit=explicit_given is True,
            lazy=lazy,
            names={m.name for m in mappings.values()},
            timestamp=timestamp,
            computed=computed,
            explicit_exp=explicit_exp,
            name_exp=name_exp,
            transport=(dev.transport or (group.transport if group else None) or "MQTT").upper(),
            endpoint=dev.endpoint,
            ngsi_v2=self.ngsi_v2,
        )

    def _provisioned_name(
        self,
        name_exp: Expression,
        scope: Scope,
        dev: Device,
        entity_type: str,
        static: dict[str, StaticAttribute],
    ) -> str | None:
        """The entity id ``entityNameExp`` gives a device when it is provisioned, as
        iotagent-node-lib names it then (from the device's id, type, service, subservice
        and static attributes); None when the expression fails or gives no name."""
        context = {
            "id": dev.device_id,
            "type": entity_type,
            "service": scope.service,
            "subservice": scope.subservice,
            "staticAttributes": [
                {"name": s.name, "type": s.type, "value": s.value} for s in static.values()
            ],
        }
        try:
            name = expression_name(name_exp.evaluate(context))
        except ExpressionError:
            return None  # the measures name its entities
        return None if name is None else entity_id_for(name, entity_type, self.ngsi_v2)

    def resolve(self, apikey: str, device_id: str) -> Resolved | None:
        """The device a message on ``/{apikey}/{device_id}/...`` comes from, if provisioned
        in the service the apikey's messages belong to (``tenant_for``, which may raise
        ``Ambiguous``)."""
        candidates = self._resolved.get((apikey, device_id))
        if not candidates:
            return None
        tenant = self.tenant_for(apikey)
        for res in candidates:
            if res.scope.service == tenant:
                return res
        return None

    def resolve_in(self, scope: Scope, device_id: str) -> Resolved | None:
        if (scope, device_id) not in self.devices:
            return None
        return self._resolve_device(scope, device_id)

    def by_entity(self, service: str, entity_id: str) -> Resolved | None:
        return self._by_entity.get((service, entity_id))

    def autoprovision(
        self, scope: Scope, apikey: str, device_id: str, transport: str | None = None
    ) -> Resolved | None:
        """Provision a device that published under its group's apikey; None when the
        service has a device of that id already (under another apikey: it stays hers)."""
        if (scope, device_id) in self.devices:
            return None
        dev = Device(device_id=device_id, apikey=apikey, transport=transport)
        self._save("device", scope, device_id, dev)
        self.devices[scope, device_id] = dev
        self._reindex()
        return self._resolve_device(scope, device_id)

    def note_entity(self, device: Resolved, entity_id: str) -> bool | None:
        """Remember that a measure of ``device`` went to ``entity_id``, the name its
        ``entityNameExp`` gave (kept in the file): the agent then serves that entity's
        commands and lazy attributes as the device's. True when this is news (a new
        entity, or one another device named before); False when known, or the device's
        own entity or another device's; None when the device named ``MAX_NAMED_ENTITIES``
        already (the entity is written, not served).

        Called for every such measure: a known entity costs a dictionary lookup."""
        owner = (device.scope, device.device_id)
        key = (device.scope.service, entity_id)
        held = self._by_entity.get(key)
        if held is not None and (not held.named or (held.scope, held.device_id) == owner):
            return False
        if owner not in self.devices:
            return False
        mine = self._named_by.setdefault(owner, set())
        if len(mine) >= MAX_NAMED_ENTITIES:
            return None
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO named_entities VALUES (?, ?, ?, ?)",
                (device.scope.service, entity_id, device.scope.subservice, device.device_id),
            )
        previous = self.named.get(key)
        if previous is not None and previous in self._named_by:
            self._named_by[previous].discard(entity_id)
        self.named[key] = owner
        mine.add(entity_id)
        base = self.resolve_in(device.scope, device.device_id)
        if base is not None:
            self._by_entity[key] = dataclasses.replace(base, entity_id=entity_id, named=True)
        return True

    def entities_of(self, scope: Scope, device_id: str) -> list[str]:
        """The ids of a device's entities: its own, and those its ``entityNameExp`` named."""
        own = self.resolve_in(scope, device_id)
        named = sorted(self._named_by.get((scope, device_id), ()))
        return ([own.entity_id] if own is not None else []) + named

    def all_resolved(self) -> list[Resolved]:
        """Every provisioned device (its own entity)."""
        return [r for r in self._by_entity.values() if not r.named]

    def all_entities(self) -> list[Resolved]:
        """Every entity the agent serves: each device's own, and those the devices'
        ``entityNameExp`` named (as ``Resolved`` of their device, ``named``)."""
        return list(self._by_entity.values())
