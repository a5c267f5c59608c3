"""The one access-control dependency of every route, and the audit middleware.

``authorize`` is a dependency of the whole application (``FastAPI(dependencies=...)``),
so every route of every API has it, and a route added later cannot go without it
(``tests/broker/api/test_route_auth.py`` enumerates them). Per request it:

1. authenticates once (``Authenticator``: API key or bearer JWT, else anonymous;
   credentials that do not verify are a 401 with ``WWW-Authenticate``);
2. classifies the operation: ``admin`` (``jsonldContexts`` add/delete, every context
   source registration and registration subscription operation), ``subscribe``
   (subscriptions), ``write`` (any other change, including batch, purge and temporal
   writes) or ``read`` (including ``POST .../entityOperations/query`` and every
   operation on ``/entityMaps``: a map belongs to the principal whose query made it,
   ``broker.core.entitymaps``);
3. refuses an operation the principal may not do in the tenant at all (401 for
   anonymous clients, 403 otherwise), and any ``/entityMaps`` operation of an anonymous
   client (401);
4. sets ``broker.auth.access.CURRENT`` so the store guard (``broker.core.guard``)
   filters reads by type and checks every write per entity.

Reads are never refused here: what the principal may not read answers as missing.
``AuditMiddleware`` (``broker.auth.middleware``, shared with the IoT agent) writes the
audit line of every accepted change and every refused request (401/403) before the
answer leaves. Without an auth file (``app.state.auth``
is None) both do nothing.
"""

from __future__ import annotations

from starlette.requests import Request

from broker import logs
from broker.auth.access import CURRENT, Access
from broker.auth.middleware import AUDITED, UNVERIFIED, AuthState
from broker.auth.policy import Action
from broker.errors import Forbidden, NgsiLdError, Unauthorized

#: Paths served without credentials: liveness and readiness probes (they tell
#: nothing about the data). ``/metrics`` needs ``admin``: its counts per tenant and
#: type would tell what each tenant holds.
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
ADMIN_PATHS = frozenset({"/metrics"})
#: Entity maps (``broker.api.entitymaps``): only for identified principals.
ENTITY_MAPS = "/ngsi-ld/v1/entityMaps"

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VERB = {"write": "change entities", "subscribe": "subscribe"}


def classify(method: str, path: str) -> Action:
    """The action an operation needs (``path`` without the entity ids is enough)."""
    if path in ADMIN_PATHS:
        return "admin"
    if "/jsonldContexts" in path and method not in _READ_METHODS:
        return "admin"
    if "/csourceRegistrations" in path or "/csourceSubscriptions" in path:
        return "admin"  # registrations make the hub call other hosts with its credentials
    if "/subscriptions" in path:
        return "subscribe"
    if path.startswith(ENTITY_MAPS):
        return "read"  # a map is its owner's: seen, changed and deleted by it alone
    if method in _READ_METHODS:
        return "read"
    if path.endswith(("/entityOperations/query", "/op/query")):
        return "read"
    return "write"


def request_tenant(request: Request) -> str:
    headers = request.headers
    return headers.get("ngsild-tenant") or headers.get("fiware-service") or ""


async def authorize(request: Request) -> None:
    """The dependency (see the module docstring)."""
    await check_request(request)


async def check_request(request: Request, operation: str | None = None) -> None:
    """``authorize``; ``operation`` names the operation in the audit log when the
    request did not go through a route (the create/retrieve fast path)."""
    auth: AuthState | None = getattr(request.app.state, "auth", None)
    path: str = request.scope["path"]  # not request.url: building it costs per request
    if auth is None or path in OPEN_PATHS:
        return
    method = request.method
    route = request.scope.get("route")
    if operation is None:
        template = getattr(route, "path", None) or path
        operation = f"{method} {template}"
    tenant = request_tenant(request)
    action = classify(method, path)
    state = request.scope.setdefault("state", {})
    try:
        principal = await auth.authenticator.authenticate(request.headers)
    except NgsiLdError:
        state[AUDITED] = Access(auth.holder.policy, UNVERIFIED, tenant, action, operation)
        raise
    access = Access(auth.holder.policy, principal, tenant, action, operation)
    state[AUDITED] = access
    logs.principal.set(principal.name)
    if principal.anonymous and path.startswith(ENTITY_MAPS):
        # which sources hold which entities is not open data
        raise Unauthorized("credentials are required for entity maps")
    if action != "read":
        policy = access.policy
        if action == "admin":
            policy.check(principal, "admin", tenant)
        elif not access.sees(tenant) or access.allowed(action, tenant) == frozenset():
            if principal.anonymous:
                raise Unauthorized("credentials are required for this operation")
            raise Forbidden(f"not allowed to {_VERB[action]} in this tenant")
    CURRENT.set(access)
