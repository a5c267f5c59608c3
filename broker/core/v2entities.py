"""NGSI v2 entity operations (Orion's ``/v2/entities``, ``/v2/types``, ``/v2/op/*``).

Every write is a mutation of the internal entity handed to ``EntityService.write``, the
path NGSI-LD writes take, so history rows are recorded and NGSI-LD subscriptions fire
alike. Names map through :class:`~broker.core.v2map.V2Mapper`; errors are the broker's
own classes, which the v2 routes render in v2's ``{"error", "description"}`` shape.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from broker.core.entities import EntityService
from broker.core.v2map import ATTR_TYPE, V2Mapper, check_attr_name, check_id, in_paths
from broker.errors import (
    AlreadyExists,
    BadRequestData,
    NgsiLdError,
    NonexistentTenant,
    ResourceNotFound,
)
from broker.model.entity import ENTITY_KEYS, Entity, Instance, now_iso
from broker.model.store import DELETE, Create, EntityQuery, Mutation, Selector
from broker.query.patterns import check_pattern, search

ENTITY_NOT_FOUND = "The requested entity has not been found. Check type and id"
ATTR_NOT_FOUND = "The entity does not have such an attribute"
Action = Literal["append", "appendStrict", "update", "delete", "replace"]
ACTIONS: tuple[str, ...] = ("append", "appendStrict", "update", "delete", "replace")


class Unprocessable(NgsiLdError):
    """422: the request conflicts with what is stored (v2's ``Unprocessable``)."""

    status = 422
    type_name = "OperationNotSupported"
    title = "Unprocessable"
    v2_error: ClassVar[str] = "Unprocessable"


@dataclass
class Target:
    """The entity an operation addresses: id, optional type, and the write service path."""

    id: str
    type: str | None = None
    #: Query paths the entity must be in (None: any).
    paths: list[str] | None = None


@dataclass
class BatchOutcome:
    done: list[str] = field(default_factory=list)
    errors: list[tuple[str, NgsiLdError]] = field(default_factory=list)


class V2Service:
    """The v2 operations over the same store and services as NGSI-LD."""

    def __init__(self, entities: EntityService, mapper: V2Mapper, *, max_batch: int = 1000) -> None:
        self.entities = entities
        self.mapper = mapper
        self.max_batch = max_batch

    # -- helpers ------------------------------------------------------------------------------

    def _checked(self, current: Entity | None, target: Target) -> Entity:
        if current is None:
            raise ResourceNotFound(ENTITY_NOT_FOUND)
        if target.type is not None and self.mapper.entity_type(current) != target.type:
            raise ResourceNotFound(ENTITY_NOT_FOUND)
        if not in_paths(current, target.paths):
            raise ResourceNotFound(ENTITY_NOT_FOUND)
        return current

    async def _write(self, tenant: str, eid: str, mutation: Mutation) -> Entity | None:
        (result,) = await self.entities.write(tenant, [(eid, mutation)])
        if result.error is not None:
            raise result.error
        return result.before

    @staticmethod
    def merge_attr(old: Instance | None, new: Instance, *, override: bool) -> Instance:
        """An updated attribute: metadata not named in the update are kept (Orion's
        default semantics) unless ``override``; creation time is kept."""
        if old is None:
            return new
        out = dict(new)
        out["createdAt"] = old.get("createdAt", new["createdAt"])
        if not override:
            for key, value in old.items():
                if key in out or key == ATTR_TYPE:
                    continue
                if key in ("unitCode", "observedAt") or (":" in key and isinstance(value, dict)):
                    out[key] = value
        return out

    # -- entities -----------------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        body: Any,
        scope: str | None,
        *,
        key_values: bool = False,
        upsert: bool = False,
    ) -> bool:
        """Create an entity (or with ``upsert`` update it if it exists); True if created."""
        now = now_iso()
        mapper = self.mapper
        if not isinstance(body, dict):
            raise BadRequestData("an entity must be a JSON object")
        if key_values:
            body = {k: (v if k in ("id", "type") else {"value": v}) for k, v in body.items()}
        new = mapper.entity(body, now, scope)
        if not upsert:
            # the store may then skip reading the entity first, as for an NGSI-LD create
            result = await self.entities.write(tenant, [(new["id"], Create(new))])
            if result[0].error is not None:
                if isinstance(result[0].error, AlreadyExists):
                    raise Unprocessable("Already Exists") from None
                raise result[0].error
            return True

        def mutate(current: Entity | None) -> Entity:
            if current is None:
                return new
            if mapper.entity_type(current) != mapper.entity_type(new):
                raise Unprocessable("Already Exists (with another type)")
            out = copy.deepcopy(current)
            for iri, instances in new.items():
                if iri in ENTITY_KEYS:
                    continue
                old = out.get(iri, [None])[0]
                out[iri] = [self.merge_attr(old, instances[0], override=False)]
            out["modifiedAt"] = now
            return out

        before = await self._write(tenant, new["id"], mutate)
        return before is None

    async def get(self, tenant: str, target: Target) -> Entity:
        check_id(target.id)
        try:
            await self.entities.check_tenant(tenant)
        except NonexistentTenant:
            raise ResourceNotFound(ENTITY_NOT_FOUND) from None
        ent = await self.entities.store.get_entity(tenant, target.id)
        return self._checked(ent, target)

    async def delete(self, tenant: str, target: Target) -> None:
        check_id(target.id)
        await self.get(tenant, target)

        def mutate(current: Entity | None) -> Any:
            self._checked(current, target)
            return DELETE

        await self._write(tenant, target.id, mutate)

    # -- attributes ---------------------------------------------------------------------------

    def attrs_mutation(
        self,
        target: Target,
        body: Any,
        *,
        mode: Literal["append", "strict", "update", "replace"],
        key_values: bool = False,
        override: bool = False,
    ) -> Mutation:
        """POST (append, ``strict`` with options=append), PATCH (update) or PUT (replace)
        of ``/attrs`` as a mutation."""
        if not isinstance(body, dict):
            raise BadRequestData("the attributes must be a JSON object")
        if "id" in body or "type" in body:
            raise BadRequestData("id and type are not allowed in an attributes update")
        if not body and mode != "replace":
            raise BadRequestData("no attributes to update")
        now = now_iso()
        attrs = self.mapper.attributes(body, now, key_values=key_values)

        def mutate(current: Entity | None) -> Entity:
            out = copy.deepcopy(self._checked(current, target))
            if mode == "replace":
                for iri in [k for k in out if k not in ENTITY_KEYS]:
                    del out[iri]
            existing = {iri for iri in attrs if iri in out}
            if mode == "strict" and existing:
                names = ", ".join(sorted(self.mapper.compact(i) for i in existing))
                raise Unprocessable(f"Attribute already exists: {target.id} - [ {names} ]")
            if mode == "update" and len(existing) < len(attrs):
                names = ", ".join(sorted(self.mapper.compact(i) for i in set(attrs) - existing))
                raise Unprocessable(
                    f"one or more of the attributes in the request do not exist: "
                    f"{target.id} - [ {names} ]"
                )
            for iri, instances in attrs.items():
                old = out.get(iri, [None])[0]
                out[iri] = [self.merge_attr(old, instances[0], override=override)]
            out["modifiedAt"] = now
            return out

        return mutate

    async def change_attrs(
        self,
        tenant: str,
        target: Target,
        body: Any,
        *,
        mode: Literal["append", "strict", "update", "replace"],
        key_values: bool = False,
        override: bool = False,
    ) -> None:
        check_id(target.id)
        mutation = self.attrs_mutation(
            target, body, mode=mode, key_values=key_values, override=override
        )
        await self._write(tenant, target.id, mutation)

    async def get_attr(self, tenant: str, target: Target, name: str) -> Instance:
        ent = await self.get(tenant, target)
        found = self.mapper.attribute_map(ent).get(name)
        if found is None:
            raise ResourceNotFound(ATTR_NOT_FOUND)
        return found

    async def put_attr(
        self, tenant: str, target: Target, name: str, body: Any, *, value_only: bool = False
    ) -> None:
        """PUT ``/attrs/{name}`` (the whole attribute) or ``/attrs/{name}/value``."""
        check_id(target.id)
        check_attr_name(name)
        iri = self.mapper.expand(name)
        now = now_iso()
        new: Instance | None = None
        if not value_only:
            new = self.mapper.attribute(name, body, now)

        def mutate(current: Entity | None) -> Entity:
            out = copy.deepcopy(self._checked(current, target))
            old = (out.get(iri) or [None])[0]
            if old is None:
                raise ResourceNotFound(ATTR_NOT_FOUND)
            if new is not None:
                out[iri] = [self.merge_attr(old, new, override=False)]
            else:
                # the value only: the type stays what it was, unless the value now implies it
                kind, _ = self.mapper.value_out(old)
                rebuilt = self.mapper.attribute(name, {"value": body, "type": kind}, now)
                out[iri] = [self.merge_attr(old, rebuilt, override=False)]
            out["modifiedAt"] = now
            return out

        await self._write(tenant, target.id, mutate)

    async def delete_attr(self, tenant: str, target: Target, name: str) -> None:
        check_id(target.id)
        iri = self.mapper.expand(check_attr_name(name))
        now = now_iso()

        def mutate(current: Entity | None) -> Entity:
            out = copy.deepcopy(self._checked(current, target))
            if iri not in out:
                raise ResourceNotFound(ATTR_NOT_FOUND)
            del out[iri]
            out["modifiedAt"] = now
            return out

        await self._write(tenant, target.id, mutate)

    # -- queries ------------------------------------------------------------------------------

    async def query(self, tenant: str, query: EntityQuery) -> tuple[list[Entity], int | None]:
        try:
            return await self.entities.query(tenant, query)
        except NonexistentTenant:
            return [], 0 if query.count else None

    async def types_matching(self, tenant: str, pattern: str) -> list[str]:
        """Expanded type IRIs whose v2 name matches ``typePattern``."""
        check_pattern(pattern)
        stats = await self._discovery(tenant)
        return [t for t in stats if search(pattern, self.mapper.compact(t))]

    async def _discovery(self, tenant: str) -> dict[str, int]:
        store = self.entities.store
        if tenant and not await store.tenant_exists(tenant):
            return {}
        return (await store.discovery(tenant)).types

    async def types(self, tenant: str, only: str | None = None) -> list[dict[str, Any]]:
        """``GET /v2/types`` entries: type, attributes with their v2 types, entity count.

        Attribute types are read off the entities of each type (up to ``max_batch`` of
        them): the store's discovery knows NGSI-LD kinds, not v2 types.
        """
        store = self.entities.store
        if tenant and not await store.tenant_exists(tenant):
            return []
        stats = await store.discovery(tenant)
        out = []
        for iri in sorted(stats.types, key=self.mapper.compact):
            name = self.mapper.compact(iri)
            if only is not None and name != only:
                continue
            ents, _ = await store.query(tenant, EntityQuery(types=[[iri]], limit=self.max_batch))
            attrs: dict[str, set[str]] = {}
            for ent in ents:
                for aname, inst in self.mapper.attribute_map(ent).items():
                    attrs.setdefault(aname, set()).add(self.mapper.value_out(inst)[0])
            out.append(
                {
                    "type": name,
                    "attrs": {a: {"types": sorted(ts)} for a, ts in sorted(attrs.items())},
                    "count": stats.types[iri],
                }
            )
        return out

    # -- batch --------------------------------------------------------------------------------

    async def update_batch(
        self,
        tenant: str,
        action: str,
        bodies: Sequence[Any],
        scope: str | None,
        paths: list[str] | None,
        *,
        key_values: bool = False,
        override: bool = False,
    ) -> BatchOutcome:
        """``POST /v2/op/update``: each entity on its own, all in one store write."""
        if action not in ACTIONS:
            raise BadRequestData(f"invalid actionType {action!r}: use {', '.join(ACTIONS)}")
        if not bodies:
            raise BadRequestData("no entities in the request")
        if len(bodies) > self.max_batch:
            raise BadRequestData(f"at most {self.max_batch} entities in one request")
        outcome = BatchOutcome()
        mutations: list[tuple[str, Mutation]] = []
        for body in bodies:
            eid = body.get("id") if isinstance(body, dict) else None
            try:
                mutations.append(
                    self._batch_mutation(action, body, scope, paths, key_values, override)
                )
            except NgsiLdError as exc:
                outcome.errors.append((str(eid), exc))
        if mutations:
            for r in await self.entities.write(tenant, mutations):
                if r.error is not None:
                    outcome.errors.append((r.id, r.error))
                else:
                    outcome.done.append(r.id)
        return outcome

    def _batch_mutation(
        self,
        action: str,
        body: Any,
        scope: str | None,
        paths: list[str] | None,
        key_values: bool,
        override: bool,
    ) -> tuple[str, Mutation]:
        if not isinstance(body, dict):
            raise BadRequestData("each entity must be a JSON object")
        eid = check_id(body.get("id"))
        etype = body.get("type")
        if etype is not None:
            check_id(etype, "entity type")
        target = Target(eid, etype, paths)
        attrs = {k: v for k, v in body.items() if k not in ("id", "type")}
        if action == "delete":
            if not attrs:

                def delete(current: Entity | None) -> Any:
                    self._checked(current, target)
                    return DELETE

                return eid, delete
            iris = [self.mapper.expand(check_attr_name(a)) for a in attrs]
            now = now_iso()

            def drop(current: Entity | None) -> Entity:
                out = copy.deepcopy(self._checked(current, target))
                missing = [i for i in iris if i not in out]
                if missing:
                    raise ResourceNotFound(ATTR_NOT_FOUND)
                for i in iris:
                    del out[i]
                out["modifiedAt"] = now
                return out

            return eid, drop
        if action in ("update", "replace"):
            mode: Literal["update", "replace"] = "update" if action == "update" else "replace"
            return eid, self.attrs_mutation(
                target, attrs, mode=mode, key_values=key_values, override=override
            )
        # append / appendStrict: create when missing
        entity_body = {"id": eid, "type": etype, **attrs} if etype else {"id": eid, **attrs}
        if key_values:
            entity_body = {
                k: (v if k in ("id", "type") else {"value": v}) for k, v in entity_body.items()
            }
        now = now_iso()
        new = self.mapper.entity(entity_body, now, scope)
        change = (
            self.attrs_mutation(
                target,
                attrs,
                mode="strict" if action == "appendStrict" else "append",
                key_values=key_values,
                override=override,
            )
            if attrs
            else None
        )

        def append(current: Entity | None) -> Entity:
            if current is None:
                return new
            if change is None:
                return self._checked(current, target)
            return change(current)  # type: ignore[return-value]

        return eid, append


def selector(
    ids: list[str] | None, id_pattern: str | None, types: list[list[str]] | None
) -> Selector:
    return Selector(ids=ids, id_pattern=id_pattern, types=types)
