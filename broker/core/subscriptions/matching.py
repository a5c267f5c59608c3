"""Matching committed changes against subscriptions, and rendering notifications
(clause 5.8 and 5.11).

Matching runs in the process that wrote, right after the store committed, on the entity
before and after the change (``broker.query.evaluate`` decides q, geoQ and scopeQ, exactly
as queries do); what matches is handed to :class:`Delivery`. ``timeInterval``
subscriptions are sent by a periodic round, claimed through the store so that several
broker processes agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from broker.core.model import View
from broker.core.subscriptions.delivery import Delivery
from broker.core.subscriptions.payload import Compiled
from broker.core.subscriptions.registry import Registry
from broker.model.entity import ATTRIBUTE_TYPES, ENTITY_KEYS, NULL, Entity, now_iso
from broker.model.store import EntityQuery, WriteResult
from broker.query.evaluate import matches_geo, matches_q, matches_scope
from broker.store.base import Store

log = logging.getLogger("renkei.subscriptions")


class LinkedEntities(Protocol):
    """The entities reachable from ``roots`` through Relationships, up to ``levels``
    hops, by id (for notifications with ``join``)."""

    async def __call__(
        self, tenant: str, roots: Sequence[Entity], levels: int, /
    ) -> dict[str, Entity]: ...


PREVIOUS = {
    "value": "previousValue",
    "object": "previousObject",
    "languageMap": "previousLanguageMap",
    "json": "previousJson",
    "vocab": "previousVocab",
    "valueList": "previousValueList",
    "objectList": "previousObjectList",
}


def attr_events(before: Entity | None, after: Entity | None, watched: set[str] | None) -> set[str]:
    """The NGSI-LD change events of one write, limited to watched attributes if any."""
    if before is None and after is None:
        return set()
    if after is None:
        assert before is not None
        had = {k for k in before if k not in ENTITY_KEYS}
        # deleting an entity deletes its (watched) attributes too
        return {"entityDeleted"} | (
            {"attributeDeleted"} if (had & watched if watched is not None else had) else set()
        )
    events = {"entityCreated"} if before is None else set()
    old = before or {}
    names = {k for k in (*old, *after) if k not in ENTITY_KEYS}
    if watched is not None:
        names &= watched
    for name in names:
        # compared per instance (datasetId): an instance can appear, change or go
        olds = {i.get("datasetId"): i for i in old.get(name, ())}
        news = {i.get("datasetId"): i for i in after.get(name, ())}
        if news.keys() - olds.keys():
            events.add("attributeCreated")
        if olds.keys() - news.keys():
            events.add("attributeDeleted")
        if any(olds[d] != news[d] for d in olds.keys() & news.keys()):
            events.add("attributeUpdated")
    if before is not None and (events or before.get("type") != after.get("type")):
        events.add("entityUpdated")
    return events


def filters(sub: Compiled, ent: Entity) -> bool:
    """Whether ``ent`` passes the subscription's q, geoQ and scopeQ."""
    return (
        (sub.q is None or matches_q(sub.q, ent))
        and (sub.geo is None or matches_geo(sub.geo, ent))
        and (sub.scope is None or matches_scope(sub.scope, ent))
    )


def render_change(
    sub: Compiled,
    before: Entity | None,
    after: Entity | None,
    linked: dict[str, Entity] | None = None,
    flat: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One entity of a notification: the entity now, deleted attributes as NGSI-LD
    Null, and with ``showChanges`` the previous value members (previousValue ...)."""
    view = sub.view()
    tm = view.tm
    if after is None:
        assert before is not None
        types = [tm.compact(t) for t in before["type"]]
        body: dict[str, Any] = {
            "id": before["id"],
            "type": types[0] if len(types) == 1 else types,
            "deletedAt": now_iso(),
        }
        if view.sys_attrs:
            body.update({k: before[k] for k in ("createdAt", "modifiedAt") if k in before})
        named = sub.attributes if sub.attributes is not None else sub.watched
        if named is None and sub.show_changes:
            named = {k for k in before if k not in ENTITY_KEYS}  # showChanges: all it had
        gone = [k for k in before if k not in ENTITY_KEYS and named is not None and k in named]
    else:
        body = view.entity(after, linked, flat)
        gone = [
            k for k in (before or {}) if k not in ENTITY_KEYS and k not in after and view.keeps(k)
        ]
        if sub.watched is not None:
            gone = [k for k in gone if k in sub.watched]
    assert before is not None or not gone
    for iri in gone:
        old = before[iri][0] if before else {}
        kind = old.get("type", "Property")
        member = ATTRIBUTE_TYPES.get(kind, "value")
        if view.format == "keyValues":
            body[tm.compact(iri)] = NULL
            continue
        item: dict[str, Any] = {
            "type": kind,
            member: {"@none": NULL} if member == "languageMap" else NULL,
        }
        if view.sys_attrs:
            item.update({k: old[k] for k in ("createdAt", "modifiedAt") if k in old})
            item["deletedAt"] = now_iso()
        if sub.show_changes and member in old:
            item[PREVIOUS[member]] = _member_value(view, member, old[member])
        body[tm.compact(iri)] = item
    if before is not None and after is not None and view.format != "keyValues":
        _removed_instances(sub, view, before, after, body)
    if sub.show_changes and before is not None and after is not None and view.format != "keyValues":
        for iri, instances in after.items():
            old_instances = before.get(iri)
            name = tm.compact(iri)
            if iri in ENTITY_KEYS or not old_instances or old_instances == instances:
                continue
            if not isinstance(body.get(name), dict) or len(instances) != 1:
                continue
            old, new = old_instances[0], instances[0]
            member = ATTRIBUTE_TYPES.get(new.get("type", "Property"), "value")
            if member in old and old.get(member) != new.get(member):
                body[name][PREVIOUS[member]] = _member_value(view, member, old[member])
    return body


def _removed_instances(
    sub: Compiled, view: View, before: Entity, after: Entity, body: dict[str, Any]
) -> None:
    """Instances (datasetIds) that went away while the attribute stays: NGSI-LD Null."""
    for iri, instances in after.items():
        if iri in ENTITY_KEYS or iri not in before or not view.keeps(iri):
            continue
        if sub.watched is not None and iri not in sub.watched:
            continue
        kept = {i.get("datasetId") for i in instances}
        removed = [i for i in before[iri] if i.get("datasetId") not in kept]
        name = view.tm.compact(iri)
        if not removed or name not in body:
            continue
        current = body[name] if isinstance(body[name], list) else [body[name]]
        for old in removed:
            kind = old.get("type", "Property")
            member = ATTRIBUTE_TYPES.get(kind, "value")
            current.append(
                {
                    "type": kind,
                    "datasetId": old.get("datasetId"),
                    member: {"@none": NULL} if member == "languageMap" else NULL,
                }
            )
        body[name] = current


def _member_value(view: View, member: str, value: Any) -> Any:
    if member == "vocab":
        return view.compact_vocab(value)
    return value


#: Handed-over notifications taken from the store in one round trip.
TAKE_OVER_BATCH = 100


class Matcher:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        delivery: Delivery,
        *,
        linked: LinkedEntities | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.delivery = delivery
        self._linked = linked
        self._scheduler: asyncio.Task[None] | None = None
        #: ``(owner record, tenant, entity types) -> bool`` when access control is on
        self.may_read: Callable[[dict[str, Any], str, list[str]], bool] | None = None

    def owner_reads(self, sub: Compiled, tenant: str, ent: Entity) -> bool:
        """Whether the subscription's owner may read ``ent`` (always, without access
        control or for a subscription stored before it was on)."""
        if self.may_read is None or sub.owner is None:
            return True
        return self.may_read(sub.owner, tenant, list(ent.get("type", ())))

    async def on_change(self, tenant: str, results: Sequence[WriteResult]) -> None:
        """Entity listener: match each committed change and queue notifications."""
        subs = [
            s
            for s in await self.registry.active(tenant)
            if s.time_interval is None and s.status == "active"
        ]
        if not subs:
            return
        for r in results:
            current = r.after if r.after is not None else r.before
            if current is None:
                continue
            # many subscriptions often render a change the same way: render it once each
            rendered: dict[tuple[Any, ...], dict[str, Any]] = {}
            for sub in subs:
                if not sub.selects(current):
                    continue
                if not self.owner_reads(sub, tenant, current):
                    continue
                if sub.v2 is not None:  # NGSI v2: its own triggers and rendering
                    item = sub.v2.change(r.before, r.after)
                    if item is not None:
                        self.delivery.submit(sub, [item])
                    continue
                events = attr_events(r.before, r.after, sub.watched)
                if not events & sub.triggers:
                    continue
                if r.after is not None and not filters(sub, r.after):
                    continue
                key = sub.rendering
                if key is not None and key in rendered:
                    self.delivery.submit(sub, [rendered[key]])
                    continue
                linked = None
                flat: list[dict[str, Any]] = []
                if sub.join is not None and r.after is not None and self._linked is not None:
                    linked = await self._linked(tenant, [r.after], sub.join_level)
                data = [render_change(sub, r.before, r.after, linked, flat)]
                if key is not None:
                    rendered[key] = data[0]
                self.delivery.submit(
                    sub, [*data, *(f for f in flat if f.get("id") != current["id"])]
                )

    def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = asyncio.create_task(
                self._periodic(), name="renkei-subscriptions-periodic"
            )

    async def _periodic(self) -> None:
        while True:
            try:
                await self.take_over()
            except Exception:  # keep the scheduler alive whatever one round met
                log.exception("taking over handed-over notifications failed")
            try:
                await self.tick()
            except Exception:
                log.exception("periodic notifications failed")
            await asyncio.sleep(1.0)

    async def take_over(self) -> int:
        """Send the notifications stopped processes handed over to the store (see
        ``delivery``); returns how many were taken. Those of a subscription deleted or
        no longer active meanwhile are dropped, as its own queue would have been."""
        taken = 0
        while True:
            pending = await self.store.take_over(TAKE_OVER_BATCH)
            for item in pending:
                subs = await self.registry.active(item.tenant)
                sub = next((s for s in subs if s.id == item.sub_id), None)
                if sub is None or sub.status != "active":
                    log.info("handed-over notification for %s dropped: not active", item.sub_id)
                    continue
                step = max(sub.coalesce, 1)  # one entity each where notifications are per entity
                for start in range(0, len(item.data), step):
                    self.delivery.submit(sub, item.data[start : start + step])
            taken += len(pending)
            if len(pending) < TAKE_OVER_BATCH:
                return taken

    async def tick(self) -> None:
        """Send the timeInterval notifications that are due (claimed through the store)."""
        for tenant in dict.fromkeys(["", *await self.store.tenants()]):
            for sub in await self.registry.active(tenant):
                if sub.time_interval is None or sub.status != "active":
                    continue
                if not await self.store.claim_notification(
                    tenant, sub.id, now=time.time(), min_gap=sub.time_interval
                ):
                    continue
                query = EntityQuery(
                    selectors=sub.selectors or None,
                    q=sub.q,
                    geo=sub.geo,
                    scope_q=sub.scope,
                    limit=1000,
                )
                entities, _ = await self.store.query(tenant, query)
                entities = [e for e in entities if self.owner_reads(sub, tenant, e)]
                if entities:
                    view = sub.view()
                    self.delivery.submit(sub, [view.entity(e) for e in entities])

    async def aclose(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
