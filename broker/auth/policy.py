"""Access decisions: what a principal may do, in which tenant, to which entity types.

The policy (compiled from the auth file by ``broker.auth.config``) gives each role a
scope per action: ``read``, ``write`` (create, update, merge, replace, delete, batch,
purge, temporal writes), ``subscribe`` (subscriptions) and ``admin`` (jsonldContexts,
IoT provisioning, retention settings). A principal holds roles and is limited to its
tenants; a principal without credentials gets the ``anonymous`` role and sees the
tenants that role names.

Entities with several types: reading needs one readable type (as a query filtered by
type matches any of them); writing needs every type writable, so no write reaches a
type the principal may not change.

Refusals never say whether another tenant, entity or type exists: the caller answers
a read of what the principal may not see as it answers a missing resource
(``check(..., not_found=...)``), and every other refusal with the same 403 text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.errors import Forbidden, ResourceNotFound, Unauthorized

#: The characters ``NGSILD-Tenant`` accepts (``broker.api.common.tenant_of``).
TENANT_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
#: Any type, or any tenant.
ALL = "*"
#: How ``broker.api.common.tenant_of`` names the default tenant (no header).
DEFAULT_TENANT = ""

Action = Literal["read", "write", "subscribe", "admin"]
ACTIONS: tuple[Action, ...] = ("read", "write", "subscribe", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: from an API key, a bearer JWT, or nobody (``anonymous``).

    ``tenants`` are tenant names as ``tenant_of`` gives them (``""`` is the default
    tenant; ``"*"`` every tenant). ``name`` is for the audit log, never a secret."""

    name: str
    roles: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    anonymous: bool = False
    #: How the principal was established: "api_key", "oidc" or "anonymous".
    via: str = "anonymous"

    def as_record(self) -> dict[str, Any]:
        """JSON-ready form, e.g. to store as a subscription's owner, whose rights
        notifications are later filtered by (``from_record`` reads it back)."""
        return {
            "name": self.name,
            "roles": sorted(self.roles),
            "tenants": sorted(self.tenants),
            "anonymous": self.anonymous,
            "via": self.via,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Principal:
        if data.get("anonymous"):
            return ANONYMOUS
        return cls(
            name=str(data.get("name", "")),
            roles=frozenset(str(r) for r in data.get("roles", ())),
            tenants=frozenset(str(t) for t in data.get("tenants", ())),
            via=str(data.get("via", "")),
        )


ANONYMOUS = Principal(name="anonymous", anonymous=True)


@dataclass(frozen=True, slots=True)
class Scope:
    """(tenant, type IRI) pairs an action is allowed on; ``*`` in either is a wildcard.
    In roles the tenant is ``*`` unless the file names one: tenant membership limits
    it to the principal's tenants."""

    pairs: frozenset[tuple[str, str]] = frozenset()

    def allows(self, tenant: str, entity_type: str) -> bool:
        p = self.pairs
        return (
            (tenant, entity_type) in p
            or (ALL, entity_type) in p
            or (tenant, ALL) in p
            or (ALL, ALL) in p
        )

    def types(self, tenant: str) -> frozenset[str] | None:
        """None when every type in ``tenant`` is allowed, else the allowed type IRIs."""
        if (tenant, ALL) in self.pairs or (ALL, ALL) in self.pairs:
            return None
        return frozenset(t for (tn, t) in self.pairs if tn in (tenant, ALL))

    def names(self, tenant: str) -> bool:
        """Whether any pair applies in ``tenant``."""
        return any(tn in (tenant, ALL) for tn, _ in self.pairs)

    def __or__(self, other: Scope) -> Scope:
        return Scope(self.pairs | other.pairs)


@dataclass(frozen=True, slots=True)
class Role:
    read: Scope = Scope()
    write: Scope = Scope()
    subscribe: Scope = Scope()
    admin: bool = False

    def scope(self, action: Action) -> Scope:
        if action == "read":
            return self.read
        if action == "write":
            return self.write
        if action == "subscribe":
            return self.subscribe
        raise ValueError(f"action {action!r} has no type scope")

    def __or__(self, other: Role) -> Role:
        return Role(
            read=self.read | other.read,
            write=self.write | other.write,
            subscribe=self.subscribe | other.subscribe,
            admin=self.admin or other.admin,
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    #: SHA-256 of the key (the key itself is never kept).
    digest: bytes
    roles: tuple[str, ...]
    tenants: frozenset[str]


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    audience: tuple[str, ...]
    jwks_url: str | None
    #: Dotted claim paths, split.
    roles_claim: tuple[str, ...]
    tenants_claim: tuple[str, ...]
    name_claim: str
    algorithms: tuple[str, ...]
    leeway: float
    fetch_timeout: float
    jwks_cache_seconds: float
    jwks_min_refresh_seconds: float


@dataclass(frozen=True, slots=True)
class Policy:
    """One loaded auth file: credentials to check and what each role may do."""

    api_keys: tuple[ApiKey, ...] = ()
    oidc: OidcSettings | None = None
    roles: Mapping[str, Role] = field(default_factory=dict)
    anonymous: Role = Role()
    #: Where the policy came from (the file's path), for messages.
    source: str = "<memory>"
    _merged: dict[frozenset[str], Role] = field(default_factory=dict, compare=False, repr=False)

    def role_of(self, principal: Principal) -> Role:
        """The union of the principal's roles; names the policy does not define (an
        identity provider sends many) give nothing."""
        if principal.anonymous:
            return self.anonymous
        role = self._merged.get(principal.roles)
        if role is None:
            role = Role()
            for name in sorted(principal.roles):
                if name in self.roles:
                    role = role | self.roles[name]
            if len(self._merged) < 1024:
                self._merged[principal.roles] = role
        return role

    def sees_tenant(self, principal: Principal, tenant: str) -> bool:
        """Whether ``tenant`` exists at all for ``principal``: its own tenants, or for
        anonymous clients the tenants the ``anonymous`` section names."""
        if principal.anonymous:
            a = self.anonymous
            return (
                a.admin
                or a.read.names(tenant)
                or a.write.names(tenant)
                or a.subscribe.names(tenant)
            )
        return ALL in principal.tenants or tenant in principal.tenants

    def can(
        self,
        principal: Principal,
        action: Action,
        tenant: str,
        entity_type: str | Collection[str] | None = None,
    ) -> bool:
        """Whether ``principal`` may do ``action`` in ``tenant`` on an entity of
        ``entity_type`` (an IRI, or all the IRIs of a multi-typed entity). Without a
        type, the question is whether every type is allowed (an operation not limited
        to types, such as a query without ``type``). ``admin`` ignores types."""
        if not self.sees_tenant(principal, tenant):
            return False
        role = self.role_of(principal)
        if action == "admin":
            return role.admin
        scope = role.scope(action)
        if entity_type is None:
            return scope.types(tenant) is None
        if isinstance(entity_type, str):
            return scope.allows(tenant, entity_type)
        if not entity_type:
            return scope.types(tenant) is None
        if action == "read":
            return any(scope.allows(tenant, t) for t in entity_type)
        return all(scope.allows(tenant, t) for t in entity_type)

    def readable_types(self, principal: Principal, tenant: str) -> frozenset[str] | None:
        """Type IRIs ``principal`` may read in ``tenant``: None for all of them, else a
        set (possibly empty) to filter queries, ``/types``, ``/attributes`` and OGC
        collections with."""
        return self.allowed_types(principal, "read", tenant)

    def allowed_types(
        self, principal: Principal, action: Action, tenant: str
    ) -> frozenset[str] | None:
        """As ``readable_types``, for ``read``, ``write`` or ``subscribe``."""
        if not self.sees_tenant(principal, tenant):
            return frozenset()
        return self.role_of(principal).scope(action).types(tenant)

    def check(
        self,
        principal: Principal,
        action: Action,
        tenant: str,
        entity_type: str | Collection[str] | None = None,
        *,
        not_found: str | None = None,
    ) -> None:
        """Raise unless ``can(...)``: ``ResourceNotFound(not_found)`` when given and the
        refusal is of a read (the resource answers as missing), else ``Unauthorized``
        for anonymous clients (so they know to bring credentials) and ``Forbidden``
        for the others. The messages name nothing but the action."""
        if self.can(principal, action, tenant, entity_type):
            return
        if not_found is not None and action == "read":
            raise ResourceNotFound(not_found)
        if principal.anonymous:
            raise Unauthorized("credentials are required for this operation")
        raise Forbidden(_REFUSED[action])


_REFUSED: dict[str, str] = {
    "read": "not allowed to read these entities",
    "write": "not allowed to change these entities",
    "subscribe": "not allowed to subscribe to these entities",
    "admin": "not allowed to administer this hub",
}
