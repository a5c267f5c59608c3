"""Entity operations (ETSI GS CIM 009 clause 5.6 and 5.7), on top of the store contract.

Every write is expressed as a pure *mutation* of the stored entity and handed to
``Store.write``, which applies it atomically; the same functions serve single
operations and batches. Listeners registered with ``on_change`` see each committed
change (subscriptions hook in there).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from broker.auth.access import current as current_access
from broker.core.model import Parser, check_expiry, check_growth, expand_types, stored_weight
from broker.core.periodic import Purger
from broker.errors import (
    BadRequestData,
    Forbidden,
    InvalidRequest,
    NonexistentTenant,
    ResourceNotFound,
)
from broker.jsonld.context import TermMap
from broker.model.entity import (
    ENTITY_KEYS,
    NULL,
    SYSTEM_KEYS,
    Entity,
    Instance,
    check_entity_id,
    check_scope,
    linked_ids,
    now_iso,
    now_us,
)
from broker.model.history import HistoryRow
from broker.model.store import DELETE, Create, EntityQuery, Mutation, WriteResult
from broker.store.base import Store

log = logging.getLogger("renkei.entities")

ChangeListener = Callable[[str, Sequence[WriteResult]], Awaitable[None]]


@dataclass
class UpdateResult:
    """Outcome of an attribute append/update: names are as the client sent them."""

    updated: list[str] = field(default_factory=list)
    not_updated: list[dict[str, str]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"updated": self.updated, "notUpdated": self.not_updated}


def _find(instances: list[Instance], dataset_id: str | None) -> int | None:
    for i, inst in enumerate(instances):
        if inst.get("datasetId") == dataset_id:
            return i
    return None


def _keep_created(new: Instance, old: Instance) -> Instance:
    if "createdAt" in old:
        new["createdAt"] = old["createdAt"]
    return new


def _merge_instance(old: Instance, patch: Instance, now: str) -> Instance:
    """Merge-patch one attribute instance: members given replace, NULL removes."""
    if "type" in patch and patch["type"] != old.get("type"):
        merged = {k: v for k, v in patch.items() if v != NULL}
        merged["createdAt"] = old.get("createdAt", now)
        return merged
    merged = dict(old)
    for key, value in patch.items():
        if value == NULL:
            merged.pop(key, None)
        elif ":" in key and key not in SYSTEM_KEYS and isinstance(value, dict):
            sub = old.get(key)
            merged[key] = (
                _merge_instance(sub, value, now) if isinstance(sub, dict) else _complete(value, now)
            )
        else:
            merged[key] = value
    merged["modifiedAt"] = now
    return merged


def _complete(inst: Instance, now: str) -> Instance:
    """Fill in what a partially parsed instance lacks when it becomes a new attribute."""
    out = dict(inst)
    if "type" not in out:
        out["type"] = "Property"
    out.setdefault("createdAt", now)
    out.setdefault("modifiedAt", now)
    for key, value in inst.items():
        if ":" in key and isinstance(value, dict):
            out[key] = _complete(value, now)
    return out


_VALUE_MEMBERS = ("value", "object", "vocab", "json", "valueList", "objectList")


def is_null(inst: Instance) -> bool:
    """An NGSI-LD Null instance (``urn:ngsi-ld:null`` as its value) deletes what it targets."""
    if any(inst.get(k) == NULL for k in _VALUE_MEMBERS):
        return True
    lm = inst.get("languageMap")
    return isinstance(lm, dict) and lm.get("@none") == NULL


def _object_body(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return body


class EntityService:
    def __init__(self, store: Store, *, max_attributes: int = 1000) -> None:
        self.store = store
        self.max_attributes = max_attributes
        self._listeners: list[ChangeListener] = []
        self._purger = Purger(
            self.purge_expired,
            what="transient entities",
            task_name="renkei-purge",
            wait_first=False,
        )

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def purge_expired(self, limit: int = 1000) -> int:
        """Delete the transient entities whose ``expiresAt`` has passed (clause 4.22 of
        v1.8.1); reads already leave them out. An entity given a later ``expiresAt``
        meanwhile is kept. Returns how many were deleted."""
        found = await self.store.expired_entities(now_us(), limit)
        by_tenant: dict[str, list[str]] = {}
        for tenant, eid in found:
            by_tenant.setdefault(tenant, []).append(eid)
        gone = 0
        for tenant, ids in by_tenant.items():
            results = await self.store.write(tenant, [(eid, _purge) for eid in ids])
            gone += sum(1 for r in results if r.ok and r.after is None)
        return gone

    def start_purge(self, interval: float) -> None:
        """Run :meth:`purge_expired` every ``interval`` seconds (0: never)."""
        self._purger.start(interval)

    async def aclose(self) -> None:
        await self._purger.aclose()

    def parser(self, tm: TermMap) -> Parser:
        return Parser(tm, max_attributes=self.max_attributes)

    async def write(
        self,
        tenant: str,
        mutations: Sequence[tuple[str, Mutation]],
        *,
        history: Mapping[str, Sequence[HistoryRow]] | None = None,
    ) -> list[WriteResult]:
        """Every write of the hub's entities (NGSI-LD, NGSI v2, batches, the temporal API,
        connectors through them): ``max_attributes`` bounds what each makes of an entity,
        and the change listeners (subscriptions) see what was committed."""
        bounded = [(eid, self._bounded(mutation)) for eid, mutation in mutations]
        results = await self.store.write(tenant, bounded, history=history)
        changed = [r for r in results if r.ok]
        if changed:
            for listener in self._listeners:
                await listener(tenant, changed)
        return results

    def _bounded(self, mutation: Mutation) -> Mutation:
        """``mutation``, refusing (for its entity alone) to make an entity hold more than
        ``max_attributes`` instances and sub-attributes, or to grow one that already does.
        Requests are bounded as they are parsed; this bounds what appends, merges and
        updates add up to, on every API."""
        limit = self.max_attributes
        if isinstance(mutation, Create):  # kept a Create: stores skip the read for those
            entity = mutation.entity
            if stored_weight(entity) <= limit:
                return mutation

            def refuse(current: Entity | None) -> Entity:
                check_growth(None, entity, limit)  # raises: it holds more than the limit
                return entity

            return refuse

        def bounded(current: Entity | None) -> Entity | Any:
            out = mutation(current)
            if isinstance(out, dict):
                check_growth(current, out, limit)
            return out

        return bounded

    async def _write_one(self, tenant: str, eid: str, mutation: Mutation) -> WriteResult:
        (result,) = await self.write(tenant, [(eid, mutation)])
        if result.error is not None:
            raise result.error
        return result

    async def check_tenant(self, tenant: str) -> None:
        if tenant and not await self.store.tenant_exists(tenant):
            raise NonexistentTenant(f"tenant {tenant!r} does not exist")

    # -- create / retrieve / delete -----------------------------------------------------------

    @staticmethod
    def create_mutation(entity: Entity) -> Mutation:
        return Create(entity)

    def new_entity(self, body: Any, tm: TermMap) -> Entity:
        _object_body(body, "an entity")
        parser = self.parser(tm)
        ent = parser.entity(body)
        ent["createdAt"] = ent["modifiedAt"] = parser.now
        return ent

    async def create(self, tenant: str, body: Any, tm: TermMap) -> Entity:
        ent = self.new_entity(body, tm)
        await self._write_one(tenant, ent["id"], self.create_mutation(ent))
        return ent

    async def retrieve(self, tenant: str, entity_id: str) -> Entity:
        check_entity_id(entity_id)
        await self.check_tenant(tenant)
        ent = await self.store.get_entity(tenant, entity_id)
        if ent is None:
            raise ResourceNotFound(f"entity {entity_id} not found")
        return ent

    async def linked(self, tenant: str, roots: Sequence[Entity], levels: int) -> dict[str, Entity]:
        """Entities reachable from ``roots`` through Relationships, up to ``levels`` hops."""
        found: dict[str, Entity] = {e["id"]: e for e in roots}
        frontier = list(roots)
        for _ in range(levels):
            wanted = [t for e in frontier for t in linked_ids(e) if t not in found]
            if not wanted:
                break
            batch, _count = await self.store.query(
                tenant, EntityQuery(ids=list(dict.fromkeys(wanted)), limit=len(wanted))
            )
            for e in batch:
                found[e["id"]] = e
            frontier = batch
        return found

    async def delete(self, tenant: str, entity_id: str) -> None:
        check_entity_id(entity_id)
        await self.check_tenant(tenant)

        def mutate(current: Entity | None) -> Any:
            if current is None:
                raise ResourceNotFound(f"entity {entity_id} not found")
            return DELETE

        await self._write_one(tenant, entity_id, mutate)

    async def query(self, tenant: str, query: EntityQuery) -> tuple[list[Entity], int | None]:
        if tenant and not await self.store.tenant_exists(tenant):
            raise NonexistentTenant(f"tenant {tenant!r} does not exist")
        return await self.store.query(tenant, query)

    async def purge(
        self,
        tenant: str,
        query: EntityQuery,
        *,
        keep: set[str] | None = None,
        drop: set[str] | None = None,
    ) -> int:
        """Delete the entities matching ``query`` (DELETE /entities); returns how many.

        With ``keep`` or ``drop`` (expanded attribute names) the entities stay and only
        their other (``keep``) or those (``drop``) attributes are deleted.
        """
        await self.check_tenant(tenant)
        access = current_access()
        if access is not None:
            # every type the query may select must be writable (none named: all types)
            named = sorted({t for conj in query.types or () for t in conj}) or None
            if not access.can("write", tenant, named):
                raise Forbidden("not allowed to change these entities")
        now = now_iso()

        def trim(current: Entity | None) -> Any:
            if current is None:
                raise ResourceNotFound("entity already deleted")
            if keep is None and drop is None:
                return DELETE
            out = {
                k: v
                for k, v in current.items()
                if k in ENTITY_KEYS or (k in keep if keep is not None else k not in (drop or set()))
            }
            out["modifiedAt"] = now
            return out

        done = 0
        offset = 0
        page = 500
        while True:
            batch, _ = await self.store.query(
                tenant, replace(query, limit=page, offset=offset, count=False)
            )
            if not batch:
                return done
            results = await self.write(tenant, [(e["id"], trim) for e in batch])
            ok = sum(1 for r in results if r.ok)
            done += ok
            if not ok:  # nothing in this page could change: it would come back forever
                return done
            if keep is not None or drop is not None:
                offset += page  # entities stay: page through them

    # -- whole-entity updates -----------------------------------------------------------------

    def replace_mutation(self, entity_id: str, body: Any, tm: TermMap) -> Mutation:
        parser = self.parser(tm)
        body = _object_body(body, "an entity")
        if "id" in body and body["id"] != entity_id:
            raise BadRequestData("the id in the body differs from the id in the URL")
        new = parser.entity(body, require_id=False)
        new["id"] = entity_id

        def mutate(current: Entity | None) -> Entity:
            if current is None:
                raise ResourceNotFound(f"entity {entity_id} not found")
            out = copy.deepcopy(new)
            out["createdAt"] = current["createdAt"]
            out["modifiedAt"] = parser.now
            return out

        return mutate

    async def replace(self, tenant: str, entity_id: str, body: Any, tm: TermMap) -> None:
        check_entity_id(entity_id)
        await self.check_tenant(tenant)
        await self._write_one(tenant, entity_id, self.replace_mutation(entity_id, body, tm))

    def merge_mutation(
        self, entity_id: str, body: Any, tm: TermMap, *, must_exist: bool = True
    ) -> Mutation:
        body = _object_body(body, "the merge fragment")
        if "id" in body and body["id"] != entity_id:
            raise BadRequestData("the id in the body differs from the id in the URL")
        parser = self.parser(tm)
        types = expand_types(body["type"], tm) if "type" in body else []
        scope = check_scope(body["scope"]) if "scope" in body and body["scope"] != NULL else None
        # a merge sets (or, with NGSI-LD Null, removes) a transient entity's expiresAt
        expires = body.get("expiresAt")
        if expires is not None and expires != NULL:
            expires = check_expiry(expires)
        attrs = parser.attributes(body, partial=True)
        now = parser.now

        def mutate(current: Entity | None) -> Entity:
            if current is None:
                if must_exist:
                    raise ResourceNotFound(f"entity {entity_id} not found")
                current = {"id": entity_id, "type": [], "createdAt": now}
            out = copy.deepcopy(current)
            for t in types:
                if t not in out["type"]:
                    out["type"].append(t)
            if not out["type"]:
                raise BadRequestData("entity type is missing")
            if scope is not None:
                out["scope"] = scope
            elif body.get("scope") == NULL:
                out.pop("scope", None)
            if expires == NULL:
                out.pop("expiresAt", None)
            elif expires is not None:
                out["expiresAt"] = expires
            for iri, instances in attrs.items():
                existing = out.get(iri, [])
                for inst in instances:
                    ds = inst.get("datasetId")
                    at = _find(existing, ds)
                    if is_null(inst):
                        if at is not None:
                            existing.pop(at)
                        continue
                    if at is None:
                        existing.append(_complete(inst, now))
                    else:
                        existing[at] = _merge_instance(existing[at], inst, now)
                if existing:
                    out[iri] = existing
                else:
                    out.pop(iri, None)
            out["modifiedAt"] = now
            return out

        return mutate

    async def merge(self, tenant: str, entity_id: str, body: Any, tm: TermMap) -> None:
        check_entity_id(entity_id)
        await self.check_tenant(tenant)
        await self._write_one(tenant, entity_id, self.merge_mutation(entity_id, body, tm))

    # -- attribute operations -----------------------------------------------------------------

    def attr_changes(
        self, entity_id: str, body: Any, tm: TermMap, *, append: bool, no_overwrite: bool
    ) -> tuple[Mutation, UpdateResult]:
        """Append (POST /attrs) or update (PATCH /attrs) attributes.

        Both add attributes the entity lacks (update does so since v1.6.1) and replace
        instances by datasetId; with ``noOverwrite`` existing instances are kept. An
        NGSI-LD Null instance deletes the instance it names. ``scope`` is replaced on
        append (merged with noOverwrite) and on update only when the entity has one.
        """
        body = _object_body(body, "the attributes fragment")
        if "id" in body and body["id"] != entity_id:
            raise BadRequestData("the id in the body differs from the id in the URL")
        parser = self.parser(tm)
        types = expand_types(body["type"], tm) if "type" in body else []
        scope = check_scope(body["scope"]) if "scope" in body else None
        attrs = parser.attributes(body)
        if not attrs and not types and scope is None:
            raise BadRequestData("no attributes to append or update")
        report = UpdateResult()
        now = parser.now

        def mutate(current: Entity | None) -> Entity:
            if current is None:
                raise ResourceNotFound(f"entity {entity_id} not found")
            report.updated.clear()
            report.not_updated.clear()
            out = copy.deepcopy(current)
            for t in types:
                if t not in out["type"]:
                    out["type"].append(t)
            if scope is not None:
                if not append and "scope" not in out:
                    report.not_updated.append(
                        {"attributeName": "scope", "reason": "the entity has no scope"}
                    )
                elif append and no_overwrite:
                    out["scope"] = [
                        *out.get("scope", []),
                        *(x for x in scope if x not in out.get("scope", [])),
                    ]
                    report.updated.append("scope")
                else:
                    out["scope"] = scope
                    report.updated.append("scope")
            for iri, instances in attrs.items():
                existing = out.setdefault(iri, [])
                done = False
                for inst in instances:
                    at = _find(existing, inst.get("datasetId"))
                    if is_null(inst):
                        if at is not None:
                            existing.pop(at)
                            done = True
                    elif at is None:
                        existing.append(_complete(inst, now))
                        done = True
                    elif append and no_overwrite:
                        report.not_updated.append(
                            {
                                "attributeName": iri,
                                "reason": "attribute exists and noOverwrite was given",
                            }
                        )
                    else:
                        existing[at] = _keep_created(_complete(inst, now), existing[at])
                        done = True
                if done and iri not in report.updated:
                    report.updated.append(iri)
                if not existing:
                    del out[iri]
            out["modifiedAt"] = now
            return out

        return mutate, report

    async def append_attrs(
        self, tenant: str, entity_id: str, body: Any, tm: TermMap, *, no_overwrite: bool = False
    ) -> UpdateResult:
        check_entity_id(entity_id)
        await self.check_tenant(tenant)
        mutation, report = self.attr_changes(
            entity_id, body, tm, append=True, no_overwrite=no_overwrite
        )
        await self._write_one(tenant, entity_id, mutation)
        return report

    async def update_attrs(
        self, tenant: str, entity_id: str, body: Any, tm: TermMap
    ) -> UpdateResult:
        check_entity_id(entity_id)
        await self.check_tenant(tenant)
        mutation, report = self.attr_changes(entity_id, body, tm, append=False, no_overwrite=False)
        await self._write_one(tenant, entity_id, mutation)
        return report

    async def update_attr(
        self, tenant: str, entity_id: str, attr: str, body: Any, tm: TermMap, *, replace: bool
    ) -> None:
        """PATCH (merge into) or PUT (replace) one attribute instance; 404 when it is absent.

        The instance is the default one, or the one whose ``datasetId`` the body names.
        An NGSI-LD Null value deletes that instance.
        """
        check_entity_id(entity_id)
        if attr == "scope":
            raise BadRequestData("scope is not an attribute: use append or merge to change it")
        body = _object_body(body, "the attribute fragment")
        if not body:
            raise BadRequestData("the attribute fragment is empty")
        await self.check_tenant(tenant)
        parser = self.parser(tm)
        iri = tm.expand(attr)
        if attr in body and len(body) == 1 and isinstance(body[attr], dict):
            body = body[attr]
        inst = parser.instance(iri, attr, body, partial=True)
        if replace and not is_null(inst):
            inst = _complete(inst, parser.now)
        now = parser.now

        def mutate(current: Entity | None) -> Entity:
            if current is None:
                raise ResourceNotFound(f"entity {entity_id} not found")
            out = copy.deepcopy(current)
            existing = out.get(iri)
            at = _find(existing, inst.get("datasetId")) if existing else None
            if existing is None or at is None:
                raise ResourceNotFound(f"attribute {attr} not found in entity {entity_id}")
            old = existing[at]
            if is_null(inst):
                existing.pop(at)
                if not existing:
                    del out[iri]
            elif replace:
                existing[at] = _keep_created(dict(inst), old)
            else:
                if "type" in inst and inst["type"] != old.get("type"):
                    raise BadRequestData(
                        f"attribute {attr} is a {old.get('type')}, the fragment says {inst['type']}"
                    )
                existing[at] = _merge_instance(old, inst, now)
            out["modifiedAt"] = now
            return out

        await self._write_one(tenant, entity_id, mutate)

    async def delete_attr(
        self,
        tenant: str,
        entity_id: str,
        attr: str,
        tm: TermMap,
        *,
        dataset_id: str | None = None,
        delete_all: bool = False,
    ) -> None:
        check_entity_id(entity_id)
        await self.check_tenant(tenant)
        iri = tm.expand(attr)
        now = Parser(tm).now

        def mutate(current: Entity | None) -> Entity:
            if current is None:
                raise ResourceNotFound(f"entity {entity_id} not found")
            out = copy.deepcopy(current)
            if attr == "scope" and "scope" in out:
                del out["scope"]
                out["modifiedAt"] = now
                return out
            existing = out.get(iri)
            if not existing:
                raise ResourceNotFound(f"attribute {attr} not found in entity {entity_id}")
            if delete_all:
                del out[iri]
            else:
                at = _find(existing, dataset_id)
                if at is None:
                    which = f"datasetId {dataset_id}" if dataset_id else "default instance"
                    raise ResourceNotFound(
                        f"attribute {attr} ({which}) not found in entity {entity_id}"
                    )
                existing.pop(at)
                if not existing:
                    del out[iri]
            out["modifiedAt"] = now
            return out

        await self._write_one(tenant, entity_id, mutate)


def _purge(current: Entity | None) -> Any:
    """The purge's mutation: the store hands None for an expired entity, which goes; one
    given a later expiresAt in the meantime stays as it is."""
    return DELETE if current is None else current
