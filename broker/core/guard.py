"""The store as the principal of the request being served may see it.

``GuardedStore`` wraps the store every service uses. Inside a request the API's
dependency has set ``broker.auth.access.CURRENT``; then, per call and per tenant:

* queries (entities, history, the ones ``purge`` and joins run) get an extra type
  restriction to the types the principal may read, added to the ``EntityQuery`` the
  backend runs, so counts and paging stay right;
* an entity of a type the principal may not read, or in a tenant it does not see,
  answers as missing (``get_entity`` gives None, ``tenant_exists`` False);
* type and attribute discovery lists only readable types (and their attributes);
* every write checks ``write`` on the types of the entity before and after it
  changes, so no operation, batch or temporal write reaches a type the principal may
  not change; the ids written are gathered for the audit log;
* subscriptions are stored with their owner (``Principal.as_record()``), whose read
  rights later filter what the notifications carry.

Outside a request nothing is set and the store is used as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from broker.auth.access import Access, current
from broker.errors import Forbidden, ResourceNotFound
from broker.model.entity import Entity
from broker.model.history import HistoryRow
from broker.model.store import (
    Create,
    Discovery,
    EntityQuery,
    HistoryEntity,
    HistoryQuery,
    Mutation,
    WriteResult,
)
from broker.store.base import Store

#: Key of a stored subscription's owner (never answered to clients).
OWNER_KEY = "renkeiOwner"


def restrict_types(
    types: Sequence[Sequence[str]] | None, allowed: frozenset[str]
) -> list[list[str]]:
    """``types`` (a disjunction of conjunctions) narrowed to entities having one of
    ``allowed``: a conjunction naming an allowed type stays, any other is ANDed with
    each allowed type in turn."""
    if types is None:
        return [[t] for t in sorted(allowed)]
    out: list[list[str]] = []
    for conj in types:
        if any(t in allowed for t in conj):
            out.append(list(conj))
        else:
            out.extend([*conj, t] for t in sorted(allowed))
    return out


def _types_of(ent: Mapping[str, Any]) -> list[str]:
    t = ent.get("type", ())
    return [t] if isinstance(t, str) else list(t)


def _not_found(entity_id: str) -> ResourceNotFound:
    return ResourceNotFound(f"entity {entity_id} not found")


def _guard(access: Access, tenant: str, eid: str, mutation: Mutation) -> Mutation:
    def guarded(cur: Entity | None) -> Any:
        if cur is not None:
            types = _types_of(cur)
            if not access.can("read", tenant, types):
                raise _not_found(eid)
            if not access.can("write", tenant, types):
                raise Forbidden("not allowed to change these entities")
        out = mutation(cur)
        if isinstance(out, dict) and not access.can("write", tenant, _types_of(out)):
            raise Forbidden("not allowed to change these entities")
        return out

    return guarded


class GuardedStore:
    """A ``Store`` filtered and checked by the request's ``Access`` (see the module)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def history_policy(self) -> Any:
        return self.inner.history_policy

    @history_policy.setter
    def history_policy(self, value: Any) -> None:
        self.inner.history_policy = value

    # -- tenants and entities -----------------------------------------------------------------

    async def tenant_exists(self, tenant: str) -> bool:
        access = current()
        if access is not None and not access.sees(tenant):
            return False
        return await self.inner.tenant_exists(tenant)

    async def tenants(self) -> list[str]:
        found = await self.inner.tenants()
        access = current()
        return found if access is None else [t for t in found if access.sees(t)]

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        ent = await self.inner.get_entity(tenant, entity_id)
        access = current()
        if ent is None or access is None:
            return ent
        return ent if access.can("read", tenant, _types_of(ent)) else None

    async def query(self, tenant: str, query: EntityQuery) -> tuple[list[Entity], int | None]:
        access = current()
        if access is not None:
            allowed = access.allowed("read", tenant)
            if allowed is not None:
                if not allowed:
                    return [], 0 if query.count else None
                query = replace(query, types=restrict_types(query.types, allowed))
        return await self.inner.query(tenant, query)

    async def discovery(self, tenant: str) -> Discovery:
        found = await self.inner.discovery(tenant)
        access = current()
        if access is None:
            return found
        allowed = access.allowed("read", tenant)
        if allowed is None:
            return found
        pairs = {k: v for k, v in found.type_attributes.items() if k[0] in allowed}
        names = {a for _, a in pairs}
        return Discovery(
            types={t: n for t, n in found.types.items() if t in allowed},
            attributes={a: n for a, n in found.attributes.items() if a in names},
            type_attributes=pairs,
        )

    async def write(
        self,
        tenant: str,
        mutations: Sequence[tuple[str, Mutation]],
        *,
        history: Mapping[str, Sequence[HistoryRow]] | None = None,
    ) -> list[WriteResult]:
        access = current()
        if access is None:
            return await self.inner.write(tenant, mutations, history=history)
        guarded: list[tuple[str, Mutation]] = []
        refused: dict[int, WriteResult] = {}
        for i, (eid, mutation) in enumerate(mutations):
            if isinstance(mutation, Create):  # kept as it is: backends recognise it
                if not access.can("write", tenant, _types_of(mutation.entity)):
                    refused[i] = WriteResult(
                        eid, error=Forbidden("not allowed to change these entities")
                    )
                    continue
                guarded.append((eid, mutation))
            else:
                guarded.append((eid, _guard(access, tenant, eid, mutation)))
        done = await self.inner.write(tenant, guarded, history=history) if guarded else []
        it = iter(done)
        results = [refused[i] if i in refused else next(it) for i in range(len(mutations))]
        access.written.extend(r.id for r in results if r.ok)
        return results

    # -- history ------------------------------------------------------------------------------

    async def history_entities(
        self, tenant: str, query: EntityQuery, window: HistoryQuery | None = None
    ) -> tuple[list[HistoryEntity], int | None]:
        access = current()
        if access is not None:
            allowed = access.allowed("read", tenant)
            if allowed is not None:
                if not allowed:
                    return [], 0 if query.count else None
                query = replace(query, types=restrict_types(query.types, allowed))
        return await self.inner.history_entities(tenant, query, window)

    async def _check_history_write(self, tenant: str, entity_id: str) -> Access | None:
        access = current()
        if access is None:
            return None
        found, _ = await self.inner.history_entities(tenant, EntityQuery(ids=[entity_id], limit=1))
        types = found[0].types if found else []
        if types and not access.can("read", tenant, types):
            raise _not_found(entity_id)
        if not access.can("write", tenant, types or None):
            raise Forbidden("not allowed to change these entities")
        return access

    async def delete_history(self, tenant: str, entity_id: str, **kwargs: Any) -> int:
        access = await self._check_history_write(tenant, entity_id)
        gone = await self.inner.delete_history(tenant, entity_id, **kwargs)
        if access is not None and gone:
            access.written.append(entity_id)
        return gone

    async def replace_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, row: HistoryRow
    ) -> bool:
        access = await self._check_history_write(tenant, entity_id)
        done = await self.inner.replace_instance(tenant, entity_id, attr, instance_id, row)
        if access is not None and done:
            access.written.append(entity_id)
        return done

    # -- subscriptions ------------------------------------------------------------------------

    async def put_subscription(self, tenant: str, sub: dict[str, Any], *, create: bool) -> None:
        access = current()
        if access is not None:
            sub = {**sub, OWNER_KEY: access.principal.as_record()}
        await self.inner.put_subscription(tenant, sub, create=create)
