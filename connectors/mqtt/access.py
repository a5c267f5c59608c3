"""Access control of the agent's HTTP side, under the broker's auth file.

The agent reads the same auth file as the broker (``RENKEI_AUTH_FILE``, loaded by
``broker.auth``), so one policy says who may do what on both. ``authorize`` is a
dependency of the whole application, so every route has it
(``tests/connectors/mqtt/test_access.py`` enumerates them). Per door:

* **provisioning** (``/iot/groups``, ``/iot/services``, ``/iot/devices``): an API key or
  bearer JWT whose principal has ``admin`` in the tenant the ``fiware-service`` header
  names (none: the default tenant); a change also needs ``write`` on every entity type
  the group or device writes (``check_writes``), and a device's ``entity_name`` may not
  name an entity that exists with another type (checked at the broker);
* **devices over HTTP** (``/iot/json``): the apikey in the request, as over MQTT (where
  Mosquitto's per-apikey passwords and ACLs pin each apikey, see ``mosquitto``);
* **notifications from the broker** (``/notify``): the secret the agent put in its
  subscriptions' ``receiverInfo`` (``NOTIFY_HEADER``), checked whether or not an auth
  file is given, since a notification makes the agent send commands to devices;
* **the agent as a context source** (``/ngsi-ld/v1/...``, ``connectors.mqtt.source``):
  the broker's forwarded requests carry the same secret in ``SOURCE_HEADER`` (its
  registrations' ``contextSourceInfo``); any other request needs a principal of the
  auth file with ``read`` (lazy attributes) or ``write`` (commands) on the device's
  entity type in the ``NGSILD-Tenant`` tenant (``check_source``, called by the route
  once it knows the device), and is refused without an auth file;
* ``/health`` and ``/iot/about`` are open; ``/metrics`` needs ``admin``.

Refusals are 401 (with ``WWW-Authenticate``) and 403 as ``{"name", "message"}``; the
message is the same whatever the reason, so it tells nothing about another tenant.
``AuditMiddleware`` (``broker.auth.middleware``, the broker's) writes a line (the
broker's format and possibly its file) for every accepted change and every refusal. Without
an auth file (``app.state.auth`` is None) only the notification secret is checked.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from starlette.requests import Request

from broker.shared import (
    AUDITED,
    UNVERIFIED,
    Action,
    AuthState,
    NgsiLdError,
    Policy,
    Principal,
    default_expand,
)
from connectors.mqtt.agent import NOTIFY_HEADER, NOTIFY_PATH
from connectors.mqtt.errors import AccessForbidden, DeviceNotFound, Unauthorized
from connectors.mqtt.registrations import SOURCE_HEADER

#: Served to anyone: liveness/readiness and the agent's version.
OPEN_PATHS = frozenset({"/health", "/iot/about"})
#: Served to principals with ``admin`` (counts per reason tell what the tenants do).
ADMIN_PATHS = frozenset({"/metrics"})
#: Devices' own door: the apikey is their credential.
DEVICE_PREFIX = "/iot/json"
#: The provisioning API.
PROVISIONING_PREFIXES = ("/iot/groups", "/iot/services", "/iot/devices")
#: The agent's NGSI-LD endpoints (it is the context source of lazy attributes, commands).
SOURCE_PREFIX = "/ngsi-ld/"

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REFUSED = "not allowed to provision devices in this service"
_REFUSED_TYPES = "not allowed to provision devices writing these entities"
_REFUSED_SOURCE = "not allowed to read or command this device"


@dataclass(slots=True)
class Grant:
    """The principal a request was let in as, and what the audit log records of it."""

    policy: Policy
    principal: Principal
    tenant: str
    operation: str
    #: whether the request asks for a change (recorded when it is accepted)
    changes: bool
    #: entity ids the provisioning change concerns (devices' entities)
    written: list[str] = field(default_factory=list)


def _tenant(request: Request) -> str:
    """The tenant a request is in: ``fiware-service``, as the agent's ``Scope`` reads it
    (lower case; none is the default tenant), or ``NGSILD-Tenant`` on the NGSI-LD
    endpoints."""
    if request.scope["path"].startswith(SOURCE_PREFIX):
        return request.headers.get("NGSILD-Tenant") or ""
    return (request.headers.get("fiware-service") or "").strip().lower()


def _has_secret(request: Request, header: str, expected: str) -> bool:
    got = request.headers.get(header)
    return got is not None and hmac.compare_digest(got.encode(), expected.encode())


def check_notify_token(request: Request, expected: str) -> None:
    """401 unless the request carries the notification secret."""
    if not _has_secret(request, NOTIFY_HEADER, expected):
        raise Unauthorized("notifications must carry the agent's notification secret")


async def authorize(request: Request) -> None:
    """The dependency (see the module docstring)."""
    path: str = request.scope["path"]
    if path == NOTIFY_PATH:
        check_notify_token(request, request.app.state.agent.notify_token)
        return
    auth: AuthState | None = getattr(request.app.state, "auth", None)
    if path.startswith(SOURCE_PREFIX):
        if _has_secret(request, SOURCE_HEADER, request.app.state.agent.notify_token):
            request.scope.setdefault("state", {})["renkei_source"] = True
            return
        if auth is None:
            raise Unauthorized(
                "requests to the agent's NGSI-LD endpoints must come from the broker (with"
                " the secret of the agent's registrations) or with credentials"
            )
    elif auth is None or path in OPEN_PATHS or path.startswith(DEVICE_PREFIX):
        return
    method = request.method
    route = request.scope.get("route")
    operation = f"{method} {getattr(route, 'path', None) or path}"
    tenant = _tenant(request)
    policy = auth.holder.policy
    changes = method in _WRITE_METHODS
    state = request.scope.setdefault("state", {})
    try:
        principal = await auth.authenticator.authenticate(request.headers)
    except NgsiLdError as exc:
        state[AUDITED] = Grant(policy, UNVERIFIED, tenant, operation, changes)
        challenge = exc.headers.get("WWW-Authenticate", 'Bearer realm="renkei"')
        raise Unauthorized(exc.detail, challenge=challenge) from None
    grant = Grant(policy, principal, tenant, operation, changes)
    state[AUDITED] = grant
    if path.startswith(SOURCE_PREFIX):
        return  # checked by the route against the device's type (``check_source``)
    if not policy.can(principal, "admin", tenant):
        if principal.anonymous:
            raise Unauthorized("credentials are required for this operation")
        raise AccessForbidden(_REFUSED)


def check_source(
    request: Request, action: Action, types: Iterable[str], *, refuse: bool = True
) -> bool:
    """On the agent's NGSI-LD endpoints: whether the request may ``action`` (``read``,
    ``write``) a device's entity of ``types``. The broker's requests (with the secret)
    may; a principal needs the action on the types in the tenant. ``refuse``: raise
    instead of answering False: 404 for a read (the entity answers as missing, as the
    broker answers it), else 401 (anonymous) or 403."""
    state = request.scope.get("state", {})
    if state.get("renkei_source"):
        return True
    grant = grant_of(request)
    allowed = grant is not None and grant.policy.can(
        grant.principal, action, grant.tenant, {default_expand(t) for t in types}
    )
    if allowed or not refuse:
        return allowed
    if action == "read":
        raise DeviceNotFound("no such entity among the agent's devices")
    if grant is None or grant.principal.anonymous:
        raise Unauthorized("credentials are required for this operation")
    raise AccessForbidden(_REFUSED_SOURCE)


def grant_of(request: Request) -> Grant | None:
    """The grant of a request let in under access control; None when it is off."""
    grant: Grant | None = request.scope.get("state", {}).get(AUDITED)
    return grant


def check_writes(
    request: Request, types: Iterable[str], existing: Iterable[Collection[str]] = ()
) -> None:
    """403 unless the request's principal may write every entity type in ``types``
    (names as provisioned, expanded as the broker expands them with its core context)
    and every type of each entity in ``existing`` (types the broker answered for the
    entities a device names). Nothing is checked with access control off."""
    grant = grant_of(request)
    if grant is None:
        return
    expanded = {default_expand(t) for t in types}
    for types_of_entity in existing:
        expanded.update(default_expand(t) for t in types_of_entity)
    if expanded and not grant.policy.can(grant.principal, "write", grant.tenant, expanded):
        raise AccessForbidden(_REFUSED_TYPES)


def record_written(request: Request, entity_ids: Iterable[str]) -> None:
    """Name in the audit line the entities a provisioning change concerns."""
    grant = grant_of(request)
    if grant is not None:
        grant.written.extend(entity_ids)
