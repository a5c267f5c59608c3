"""The temporal API (ETSI GS CIM 009 clauses 5.6.11-5.6.20, 5.7.3-5.7.4) over the history.

History comes from two sources: every entity write records what it changed (see
``broker.model.history``), and clients may add instances directly through the
temporal API (``POST /temporal/entities``). Both land in the same store tables.

Entity selection uses the history's own index (ids, types, id pattern, attributes);
``q``, geo-queries and ``scopeQ`` are evaluated with the reference evaluator on the
entity's temporal evolution within the requested time range: an entity matches when
its instances (as multi-instance attributes) satisfy the query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from broker.core.batch import BatchItem, BatchResult
from broker.core.entities import EntityService
from broker.core.model import Parser
from broker.errors import BadRequestData, NgsiLdError, NonexistentTenant, ResourceNotFound
from broker.model.entity import ENTITY_KEYS, Entity, Instance, check_entity_id, now_iso
from broker.model.history import Duration, HistoryRow, from_us, row_for, to_us
from broker.model.query import count_param
from broker.model.store import (
    ANY_DATASET,
    DELETE,
    EntityQuery,
    HistoryEntity,
    HistoryQuery,
    Mutation,
)
from broker.query.evaluate import matches_geo, matches_q, matches_scope
from broker.store.base import Store

log = logging.getLogger("renkei.temporal")

TIME_PROPERTIES = ("observedAt", "createdAt", "modifiedAt", "deletedAt")
#: Entities looked at, at most, when q/geo/scopeQ filter on the temporal evolution.
_FILTER_SCAN = 10_000


@dataclass(slots=True)
class TemporalEntity:
    """One entity's selected temporal evolution, in internal form."""

    meta: HistoryEntity
    #: attribute IRI -> instances (each with instanceId and system times), oldest first
    attrs: dict[str, list[Instance]] = field(default_factory=dict)
    #: attribute IRI -> method -> [[value, start, end], ...] (aggregatedValues)
    aggregates: dict[str, dict[str, list[list[Any]]]] = field(default_factory=dict)
    #: attribute IRI -> attribute type, for aggregated output
    kinds: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class TemporalResult:
    entities: list[TemporalEntity]
    total: int | None
    #: set when more instances matched, in all, than one answer holds (206 paging)
    truncated: bool = False
    #: the time range actually returned when truncated (ISO strings)
    range_start: str | None = None
    range_end: str | None = None


@dataclass(slots=True)
class Aggregation:
    methods: list[str]
    period: Duration | None


def time_query(
    timerel: str | None,
    time_at: str | None,
    end_time_at: str | None,
    time_property: str | None,
    last_n: str | None,
    *,
    limit: int,
) -> HistoryQuery:
    """Validate the temporal query parameters into a HistoryQuery (attrs set later)."""
    prop = time_property or "observedAt"
    if prop not in TIME_PROPERTIES:
        raise BadRequestData(f"timeproperty must be one of {', '.join(TIME_PROPERTIES)}")
    if timerel is None:
        if time_at is not None or end_time_at is not None:
            raise BadRequestData("timeAt and endTimeAt need timerel")
    elif timerel not in ("before", "after", "between"):
        raise BadRequestData("timerel must be before, after or between")
    elif time_at is None:
        raise BadRequestData(f"timerel={timerel} needs timeAt")
    elif timerel == "between" and end_time_at is None:
        raise BadRequestData("timerel=between needs endTimeAt")
    start = to_us(time_at) if time_at is not None else None
    end = to_us(end_time_at) if end_time_at is not None and timerel == "between" else None
    if start is not None and end is not None and end <= start:
        raise BadRequestData("endTimeAt must be after timeAt")
    n = None
    if last_n is not None:
        n = count_param(last_n, "lastN", 1)
    return HistoryQuery(
        time_property=prop,
        timerel=timerel,
        time_at=start,
        end_time_at=end,
        last_n=n,
        limit=limit,
    )


def _instance_out(row: HistoryRow) -> Instance:
    assert row.instance is not None
    inst = dict(row.instance)
    inst["instanceId"] = row.instance_id
    inst["createdAt"] = from_us(row.created)
    inst["modifiedAt"] = from_us(row.modified)
    if row.deleted is not None:
        inst["deletedAt"] = from_us(row.deleted)
    return inst


def _time_of(row: HistoryRow, prop: str) -> int:
    if prop == "observedAt":
        return row.at
    if prop == "createdAt":
        return row.created
    if prop == "deletedAt":
        return row.deleted or row.at
    return row.modified


def _delete(_current: Entity | None) -> Any:
    return DELETE


def _observed(inst: Instance) -> int:
    observed = inst.get("observedAt")
    return to_us(observed) if isinstance(observed, str) else 0


class TemporalService:
    def __init__(self, entities: EntityService) -> None:
        self.entities = entities
        self.store: Store = entities.store
        self.max_attributes = entities.max_attributes
        self._expiry: asyncio.Task[None] | None = None

    def _parser(self, tm: Any) -> Parser:
        return Parser(tm, max_attributes=self.max_attributes, temporal=True)

    def start_expiry(self, interval: float) -> None:
        """Run the retention job every ``interval`` seconds (0: never)."""
        if interval > 0 and self.store.history_policy.retention:
            self._expiry = asyncio.create_task(self._expire_loop(interval), name="renkei-expiry")

    async def _expire_loop(self, interval: float) -> None:
        while True:
            try:
                gone = await self.store.expire_history(to_us(now_iso()))
                if gone:
                    log.info("history retention: %d attribute instances expired", gone)
            except Exception:
                log.exception("history retention job failed; retrying at the next run")
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
            self._expiry = None

    async def check_tenant(self, tenant: str) -> None:
        if tenant and not await self.store.tenant_exists(tenant):
            raise NonexistentTenant(f"tenant {tenant!r} does not exist")

    # -- provision ------------------------------------------------------------------------

    def _rows(self, attrs: dict[str, list[Instance]], now: int) -> list[HistoryRow]:
        rows: list[HistoryRow] = []
        for attr, instances in attrs.items():
            for inst in instances:
                rows.append(row_for(attr, inst, now))
        return rows

    async def _exists(self, tenant: str, entity_id: str) -> bool:
        found, _ = await self.store.history_entities(tenant, EntityQuery(ids=[entity_id], limit=1))
        return bool(found)

    def _mutation(
        self,
        entity_id: str,
        types: list[str],
        scope: list[str] | None,
        attrs: dict[str, list[Instance]],
        now: str,
    ) -> tuple[Mutation, list[HistoryRow]]:
        """The write adding ``attrs``' instances to the history and bringing the current
        state up to date: each (attribute, datasetId) takes its latest instance by
        ``observedAt`` unless a newer one is stored, whatever order instances come in."""
        rows = self._rows(attrs, to_us(now))
        latest: dict[tuple[str, str | None], Instance] = {}
        for attr, instances in attrs.items():
            for inst in instances:
                key = (attr, inst.get("datasetId"))
                if key not in latest or _observed(inst) >= _observed(latest[key]):
                    latest[key] = inst

        def mutate(current: Entity | None) -> Entity:
            ent: Entity = (
                dict(current)
                if current is not None
                else {"id": entity_id, "type": [], "createdAt": now}
            )
            ent["type"] = ent["type"] + [t for t in types if t not in ent["type"]]
            if scope is not None:
                ent["scope"] = scope
            for (attr, ds), inst in latest.items():
                kept = [i for i in ent.get(attr, []) if i.get("datasetId") != ds]
                old = next((i for i in ent.get(attr, []) if i.get("datasetId") == ds), None)
                if old is not None and _observed(old) > _observed(inst):
                    continue
                new = dict(inst)
                new["createdAt"] = old.get("createdAt", now) if old is not None else now
                new["modifiedAt"] = now
                ent[attr] = [*kept, new]
            ent["modifiedAt"] = now
            return ent

        return mutate, rows

    async def _append(
        self,
        tenant: str,
        entity_id: str,
        types: list[str],
        scope: list[str] | None,
        attrs: dict[str, list[Instance]],
        now: str,
    ) -> None:
        mutate, rows = self._mutation(entity_id, types, scope, attrs, now)
        (result,) = await self.entities.write(
            tenant, [(entity_id, mutate)], history={entity_id: rows}
        )
        if result.error is not None:
            raise result.error

    def check_entity(self, body: Any, tm: Any) -> None:
        """Raise BadRequestData unless ``body`` is a valid temporal entity (before any
        part of it is sent to a context source)."""
        if not isinstance(body, dict):
            raise BadRequestData("a temporal entity must be a JSON object")
        self._parser(tm).entity(body)

    def check_attrs(self, body: Any, tm: Any) -> None:
        """Raise BadRequestData unless ``body`` holds valid attribute instances."""
        if not isinstance(body, dict):
            raise BadRequestData("the attributes must be a JSON object")
        if not self._parser(tm).attributes(body):
            raise BadRequestData("no attribute to add")

    async def upsert(self, tenant: str, body: Any, tm: Any) -> bool:
        """Create or add to the temporal evolution of an entity; True when it is new."""
        if not isinstance(body, dict):
            raise BadRequestData("a temporal entity must be a JSON object")
        parser = self._parser(tm)
        ent = parser.entity(body)
        created = not await self._exists(tenant, ent["id"])
        attrs = {k: v for k, v in ent.items() if k not in ENTITY_KEYS}
        await self._append(tenant, ent["id"], ent["type"], ent.get("scope"), attrs, parser.now)
        return created

    async def upsert_many(self, tenant: str, items: list[BatchItem]) -> BatchResult:
        """Renkei extension: :meth:`upsert` of many temporal entities in one store write.

        Each entity is parsed and written on its own (a bad one is reported, the others
        kept), as the batch entity operations do; the store gets a single ``write``
        call, so a SQLite batch is one transaction.
        """
        result = BatchResult()
        mutations: list[tuple[str, Mutation]] = []
        history: dict[str, list[HistoryRow]] = {}
        for item in items:
            try:
                if item.error is not None:
                    raise item.error
                if not isinstance(item.body, dict):
                    raise BadRequestData("a temporal entity must be a JSON object")
                parser = self._parser(item.tm)
                ent = parser.entity(item.body)
                eid = ent["id"]
                if eid in history:
                    raise BadRequestData(f"entity {eid} appears twice in the batch")
                attrs = {k: v for k, v in ent.items() if k not in ENTITY_KEYS}
                mutate, rows = self._mutation(eid, ent["type"], ent.get("scope"), attrs, parser.now)
            except NgsiLdError as exc:
                body = item.body
                bad_id = body.get("id") if isinstance(body, dict) else None
                result.fail(bad_id if isinstance(bad_id, str) else "", exc)
                continue
            mutations.append((eid, mutate))
            history[eid] = rows
        if mutations:
            for r in await self.entities.write(tenant, mutations, history=history):
                if r.error is not None:
                    result.fail(r.id, r.error)
                else:
                    result.success.append(r.id)
        return result

    async def _meta(self, tenant: str, entity_id: str) -> HistoryEntity:
        check_entity_id(entity_id)
        await self.check_tenant(tenant)
        found, _ = await self.store.history_entities(tenant, EntityQuery(ids=[entity_id], limit=1))
        if not found:
            raise ResourceNotFound(f"no temporal evolution of entity {entity_id}")
        return found[0]

    async def add_attrs(self, tenant: str, entity_id: str, body: Any, tm: Any) -> None:
        meta = await self._meta(tenant, entity_id)
        if not isinstance(body, dict):
            raise BadRequestData("the attributes must be a JSON object")
        parser = self._parser(tm).for_types([tm.compact(t) for t in meta.types])
        attrs = parser.attributes(body)
        if not attrs:
            raise BadRequestData("no attribute to add")
        await self._append(tenant, entity_id, meta.types, None, attrs, parser.now)

    async def delete(self, tenant: str, entity_id: str) -> None:
        """Delete the temporal representation: the history and the entity's current state
        (its latest point), so nothing of it is left in either API."""
        await self._meta(tenant, entity_id)
        if await self.store.get_entity(tenant, entity_id) is not None:
            (result,) = await self.entities.write(tenant, [(entity_id, _delete)])
            if result.error is not None:
                raise result.error
        await self.store.delete_history(tenant, entity_id)

    async def delete_attr(
        self,
        tenant: str,
        entity_id: str,
        attr: str,
        *,
        dataset_id: str | None,
        delete_all: bool,
    ) -> None:
        await self._meta(tenant, entity_id)
        gone = await self.store.delete_history(
            tenant, entity_id, attr=attr, dataset_id=ANY_DATASET if delete_all else dataset_id
        )
        if not gone:
            raise ResourceNotFound(f"entity {entity_id} has no such attribute history")

    async def delete_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str
    ) -> None:
        await self._meta(tenant, entity_id)
        gone = await self.store.delete_history(
            tenant, entity_id, attr=attr, instance_id=instance_id
        )
        if not gone:
            raise ResourceNotFound(f"no instance {instance_id} of that attribute")

    async def patch_instance(
        self,
        tenant: str,
        entity_id: str,
        attr: str,
        name: str,
        instance_id: str,
        body: Any,
        tm: Any,
    ) -> None:
        meta = await self._meta(tenant, entity_id)
        if not isinstance(body, dict):
            raise BadRequestData("the attribute instance must be a JSON object")
        raw = body.get(name, body)
        if isinstance(raw, list):
            if len(raw) != 1:
                raise BadRequestData("exactly one attribute instance is expected")
            raw = raw[0]
        if not isinstance(raw, dict):
            raise BadRequestData("the attribute instance must be a JSON object")
        parser = self._parser(tm).for_types([tm.compact(t) for t in meta.types])
        current = await self.store.history(
            tenant, [entity_id], HistoryQuery(attrs=[attr], limit=1_000_000)
        )
        old = next(
            (r for r in current.get(entity_id, {}).get(attr, []) if r.instance_id == instance_id),
            None,
        )
        if old is None or old.instance is None:
            raise ResourceNotFound(f"no instance {instance_id} of that attribute")
        patch = parser.instance(attr, name, raw, partial=True)
        merged = {
            **old.instance,
            **{k: v for k, v in patch.items() if k not in ("createdAt", "modifiedAt")},
        }
        if "type" not in merged:
            merged["type"] = "Property"
        now = to_us(now_iso())
        row = row_for(attr, merged, now)
        if "observedAt" not in merged:
            row.at = old.at
        if not await self.store.replace_instance(tenant, entity_id, attr, instance_id, row):
            raise ResourceNotFound(f"no instance {instance_id} of that attribute")

    # -- consumption ----------------------------------------------------------------------

    async def query(
        self,
        tenant: str,
        selection: EntityQuery,
        hq: HistoryQuery,
        aggregation: Aggregation | None = None,
        *,
        omit_empty: bool = True,
    ) -> TemporalResult:
        """The temporal evolution of the selected entities within ``hq``'s time range.

        At most ``hq.limit`` instances are returned in all: when more match, the
        earliest (or, with lastN, the latest) are kept across every entity and
        attribute, and the result says which time range it covers (206 paging).
        Entities with no instance in the range are left out when ``omit_empty``.
        """
        if tenant and not await self.store.tenant_exists(tenant):
            raise NonexistentTenant(f"tenant {tenant!r} does not exist")
        read = replace(hq, attrs=selection.attrs or hq.attrs)
        filtered = (
            selection.q is not None
            or selection.geo is not None
            or selection.scope_q is not None
            or bool(selection.order_by)
        )
        window = read if omit_empty else None
        if not filtered:
            metas, total = await self.store.history_entities(tenant, selection, window)
            if aggregation is not None:  # computed in the store: no instance is read here
                return await self._aggregated(tenant, metas, total, read, aggregation)
            history = await self.store.history(tenant, [m.id for m in metas], read)
        else:
            metas, _ = await self.store.history_entities(
                tenant, replace(selection, limit=_FILTER_SCAN, offset=0, count=False), window
            )
            # q and geo may test attributes other than those returned: read them all
            everything = await self.store.history(
                tenant, [m.id for m in metas], replace(read, attrs=None)
            )
            kept = [m for m in metas if self._matches(selection, m, everything.get(m.id, {}))]
            if selection.order_by:
                kept = await self._ordered(tenant, kept, selection)
            total = len(kept) if selection.count else None
            metas = kept[selection.offset : selection.offset + selection.limit]
            history = {
                m.id: {
                    a: rows
                    for a, rows in everything.get(m.id, {}).items()
                    if read.attrs is None or a in read.attrs
                }
                for m in metas
            }
        if aggregation is not None:
            return await self._aggregated(tenant, metas, total, read, aggregation)
        result = TemporalResult([], total)
        cut = self._cut(result, history, hq)
        for meta in metas:
            per_attr = history.get(meta.id, {})
            if omit_empty and not per_attr:
                continue
            te = TemporalEntity(meta)
            for attr, rows in per_attr.items():
                te.kinds[attr] = str((rows[0].instance or {}).get("type", "Property"))
                te.attrs[attr] = [_instance_out(r) for r in rows if cut(r)]
            result.entities.append(te)
        return result

    @staticmethod
    def _cut(
        result: TemporalResult, history: dict[str, dict[str, list[HistoryRow]]], hq: HistoryQuery
    ) -> Any:
        """Keep at most ``hq.limit`` instances in all; returns the row filter.

        Clause 6.3.10: with lastN the page goes "backwards" (the most recent first),
        else "forwards"; the range it announces starts where the requested time range
        starts in that direction (the first instance when the request leaves it open)
        and ends at the last instance kept. Instances sharing that last time are kept
        together, so that a next page starting after it misses none."""
        prop = hq.time_property
        times = sorted(
            (
                _time_of(r, prop)
                for attrs in history.values()
                for rows in attrs.values()
                for r in rows
            ),
            reverse=bool(hq.last_n),
        )
        if len(times) <= hq.limit:
            return lambda row: True
        result.truncated = True
        bound = times[hq.limit - 1]
        if hq.last_n:
            newest = times[0]
            if hq.timerel == "before" and hq.time_at is not None:
                start = hq.time_at
            elif hq.timerel == "between" and hq.end_time_at is not None:
                start = hq.end_time_at
            else:
                start = newest
            result.range_start, result.range_end = from_us(start), from_us(bound)
            return lambda row: _time_of(row, prop) >= bound
        oldest = times[0]
        start = (
            hq.time_at if hq.timerel in ("after", "between") and hq.time_at is not None else oldest
        )
        result.range_start, result.range_end = from_us(start), from_us(bound)
        return lambda row: _time_of(row, prop) <= bound

    async def _ordered(
        self, tenant: str, metas: list[HistoryEntity], selection: EntityQuery
    ) -> list[HistoryEntity]:
        """Order by the entities' current state (orderBy); entities since deleted last."""
        current, _ = await self.store.query(
            tenant,
            EntityQuery(
                ids=[m.id for m in metas], order_by=selection.order_by, limit=len(metas) or 1
            ),
        )
        rank = {e["id"]: i for i, e in enumerate(current)}
        return sorted(metas, key=lambda m: (rank.get(m.id, len(rank)), m.id))

    @staticmethod
    def _matches(
        selection: EntityQuery, meta: HistoryEntity, attrs: dict[str, list[HistoryRow]]
    ) -> bool:
        ent: Entity = {"id": meta.id, "type": meta.types}
        if meta.scope:
            ent["scope"] = meta.scope
        for attr, rows in attrs.items():
            ent[attr] = [r.instance for r in rows if r.instance is not None]
        if selection.q is not None and not matches_q(selection.q, ent):
            return False
        geo = selection.geo
        if geo is not None and not any(
            matches_geo(geo, {**ent, geo.geoproperty: [inst]})
            for inst in ent.get(geo.geoproperty, [])
        ):
            return False  # an entity matches where any of its positions in time does
        return selection.scope_q is None or matches_scope(selection.scope_q, ent)

    async def _aggregated(
        self,
        tenant: str,
        metas: list[HistoryEntity],
        total: int | None,
        hq: HistoryQuery,
        aggregation: Aggregation,
    ) -> TemporalResult:
        """Aggregates per period. Each period is one instance of the aggregated
        representation: when the answer spans more periods than ``hq.limit``, it holds
        the earliest ones (paging forwards, clause 6.3.10; aggregates are never split
        across pages) and announces their range, which ends where the next page starts."""
        result = TemporalResult([], total)
        found = await self.store.aggregate_history(
            tenant, [m.id for m in metas], hq, aggregation.methods, aggregation.period
        )
        periods = {
            (start, end)
            for aggs in found.values()
            for agg in aggs.values()
            for series in agg.values.values()
            for _, start, end in series
        }
        starts = sorted({start for start, _ in periods})
        if len(starts) > hq.limit:
            bound = starts[hq.limit - 1]
            end = 0
            for aggs in found.values():
                for agg in aggs.values():
                    for m, series in agg.values.items():
                        agg.values[m] = kept = [p for p in series if p[1] <= bound]
                        end = max([end, *(p[2] for p in kept)])
            first = hq.time_at if hq.timerel in ("after", "between") else None
            result.truncated = True
            result.range_start = from_us(first if first is not None else starts[0])
            result.range_end = from_us(end)
        # the entities of an answer mostly share their periods: each bound formatted once
        text = {us: from_us(us) for period in periods for us in period}
        for meta in metas:
            per_attr = found.get(meta.id)
            if not per_attr:
                continue
            te = TemporalEntity(meta)
            for attr, agg in per_attr.items():
                te.kinds[attr] = agg.kind
                te.attrs[attr] = []
                te.aggregates[attr] = {
                    m: [[value, text[start], text[end]] for value, start, end in series]
                    for m, series in agg.values.items()
                }
            result.entities.append(te)
        return result
