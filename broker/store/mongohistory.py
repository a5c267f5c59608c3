"""Attribute history on MongoDB (the temporal API), beside ``mongodb.py``.

Collections: ``history_entities`` (``_id = {t, i}``: types, scope and times of every
entity that has history, deleted ones too) and ``history``, one document per attribute
instance: ``_id`` is the instance's number (``urn:ngsi-ld:Instance:<n>``, reserved in
blocks from ``counters``, never reused), then ``t``, ``eid``, ``attr``, ``ds``
(datasetId), the times ``at`` (observedAt, else write time), ``created``,
``modified``, ``deleted`` (µs), ``num`` (the numeric value), ``vkey`` (other values,
for distinctCount), ``doc`` (the instance, keys escaped) and ``iid`` (a client-given
instanceId). The index ``(t, eid, attr, deleted, at)`` serves a time range of one
attribute.

History is appended in the entity writes' transaction on a replica set or sharded
cluster (``session``), so it commits or aborts with them; on a standalone server,
which has no transactions, right after them. Aggregations are computed by MongoDB, one aggregation
pipeline per entity: ``$match`` on ``series_at``'s keys, ``$group`` by attribute and
period, so only the aggregates reach the broker (``docs/mongodb.md``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from pymongo import ASCENDING, DESCENDING, DeleteMany, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from broker.model.entity import Entity
from broker.model.history import (
    Duration,
    HistoryPolicy,
    HistoryRow,
    changes,
    instance_number,
    to_us,
)
from broker.model.store import (
    ANY_DATASET,
    Aggregates,
    AnyDataset,
    AttrAggregate,
    EntityQuery,
    History,
    HistoryEntity,
    HistoryQuery,
    Selector,
)
from broker.query.patterns import check_pattern, search
from broker.store.mongoquery import escape_doc, unescape_doc

Doc = dict[str, Any]

_TIME_FIELDS: Final = {
    "observedAt": "at",
    "createdAt": "created",
    "modifiedAt": "modified",
    "deletedAt": "deleted",
}

HISTORY_INDEXES: Final = (
    IndexModel(
        [
            ("t", ASCENDING),
            ("eid", ASCENDING),
            ("attr", ASCENDING),
            ("deleted", ASCENDING),
            ("at", ASCENDING),
        ],
        name="series_at",
    ),
    IndexModel([("t", ASCENDING), ("attr", ASCENDING), ("eid", ASCENDING)], name="attr_eid"),
)
ENTITY_INDEXES: Final = (
    IndexModel([("t", ASCENDING), ("eid", ASCENDING)], name="tenant_eid"),
    IndexModel([("t", ASCENDING), ("types", ASCENDING)], name="tenant_types"),
)


def _created(ent: Entity, now: int) -> int:
    created = ent.get("createdAt")
    return to_us(created) if isinstance(created, str) else now


def _row_doc(tenant: str, eid: str, hid: int, row: HistoryRow) -> Doc:
    num, vkey = row.stored_value()
    return {
        "_id": hid,
        "t": tenant,
        "eid": eid,
        "attr": row.attr,
        "ds": row.dataset_id,
        "at": row.at,
        "created": row.created,
        "modified": row.modified,
        "num": num,
        "vkey": vkey.decode() if vkey else None,
        "doc": escape_doc(row.instance),
        "iid": row.iid,
        "deleted": row.deleted,
    }


def _row(doc: Doc) -> HistoryRow:
    return HistoryRow(
        attr=doc["attr"],
        dataset_id=doc.get("ds"),
        at=doc["at"],
        created=doc["created"],
        modified=doc["modified"],
        instance=unescape_doc(doc["doc"]),
        iid=doc.get("iid"),
        hid=doc["_id"],
        deleted=doc.get("deleted"),
    )


def _time_filter(query: HistoryQuery) -> tuple[str, Doc]:
    """The time field of ``query``'s time property and the filter of its range
    (``before`` strict; ``after`` and ``between`` include their start)."""
    field = _TIME_FIELDS[query.time_property]
    rng: Doc = {}
    if query.timerel == "before" and query.time_at is not None:
        rng = {"$lt": query.time_at}
    elif query.timerel == "after" and query.time_at is not None:
        rng = {"$gte": query.time_at}
    elif query.timerel == "between" and query.time_at is not None and query.end_time_at is not None:
        rng = {"$gte": query.time_at, "$lt": query.end_time_at}
    if field == "deleted":
        return field, {"deleted": {"$ne": None, **rng}}
    flt: Doc = {"deleted": None}
    if rng:
        flt[field] = rng
    return field, flt


def _instance_filter(instance_id: str) -> Doc:
    hid = instance_number(instance_id)
    if hid is not None:
        return {"$or": [{"_id": hid, "iid": None}, {"iid": instance_id}]}
    return {"iid": instance_id}


def _selected(sel: Selector | EntityQuery, entry: Doc) -> bool:
    if sel.ids and entry["eid"] not in sel.ids:
        return False
    if sel.id_pattern and not search(check_pattern(sel.id_pattern), entry["eid"]):
        return False
    if sel.types:
        types = set(entry.get("types") or ())
        if not any(all(t in types for t in conj) for conj in sel.types):
            return False
    return True


class NumbersNeeded(Exception):
    """Raised in a transaction that needs more instance numbers than are at hand: the
    caller aborts it, calls ``MongoHistory.reserve`` and runs it again."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} instance numbers needed")
        self.count = count


class MongoHistory:
    """The history half of ``MongoStore`` (same database)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.db = db
        # instance numbers at hand: [_next_id, _stop_id)
        self._next_id = self._stop_id = 0
        self._reserving = asyncio.Lock()

    async def open(self) -> None:
        await self.db.history.create_indexes(list(HISTORY_INDEXES))
        await self.db.history_entities.create_indexes(list(ENTITY_INDEXES))

    def _take(self, count: int) -> int | None:
        """The first of ``count`` instance numbers from the block at hand, if it has them."""
        if self._stop_id - self._next_id < count:
            return None
        first = self._next_id
        self._next_id += count
        return first

    async def reserve(self, count: int) -> None:
        """Have ``count`` fresh instance numbers at hand: a block (``_BLOCK``, or more)
        reserved from ``counters``, outside any transaction, since every write would
        conflict on the counter otherwise. Numbers are never reused: a broker that
        stops, or a transaction that aborts, leaves a gap."""
        async with self._reserving:
            if self._stop_id - self._next_id >= count:
                return
            size = max(count, _BLOCK)
            doc = await self.db.counters.find_one_and_update(
                {"_id": "history"},
                {"$inc": {"n": size}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            assert doc is not None
            self._next_id, self._stop_id = int(doc["n"]) - size + 1, int(doc["n"]) + 1

    async def record(
        self,
        policy: HistoryPolicy,
        tenant: str,
        writes: Sequence[tuple[str, Entity | None, Entity | None, Sequence[HistoryRow] | None]],
        now: int,
        *,
        session: AsyncClientSession | None = None,
    ) -> None:
        """Append what a batch of entity writes changed, in a few round trips.

        ``writes``: per successful write, the entity id, the entity before and after,
        and the temporal API's explicit rows (None for an entity write). Explicit rows
        replace instances of the same attribute, datasetId and observedAt; an entity
        write records what changed (``broker.model.history.changes``). With
        ``session``, everything is written in its transaction."""
        entries: list[UpdateOne] = []
        replaced: list[DeleteMany] = []
        docs: list[tuple[str, HistoryRow]] = []
        for eid, before, after, explicit in writes:
            ent = after if after is not None else before
            if ent is None or not policy.records(tenant, ent["type"]):
                continue
            rows = list(explicit) if explicit is not None else changes(before, after, now)
            key = {"_id": {"t": tenant, "i": eid}}
            if after is None:
                entries.append(UpdateOne(key, {"$set": {"deleted": now, "modified": now}}))
            elif (
                before is None
                or before.get("type") != after.get("type")
                or before.get("scope") != after.get("scope")
            ):
                entries.append(
                    UpdateOne(
                        key,
                        {
                            "$set": {
                                "t": tenant,
                                "eid": eid,
                                "types": list(after["type"]),
                                "scope": after.get("scope"),
                                "modified": now,
                                "deleted": None,
                            },
                            "$setOnInsert": {"created": _created(after, now)},
                        },
                        upsert=True,
                    )
                )
            elif rows:  # the entry is made again if its history was deleted meanwhile
                entries.append(
                    UpdateOne(
                        key,
                        {
                            "$set": {"modified": now},
                            "$setOnInsert": {
                                "t": tenant,
                                "eid": eid,
                                "types": list(after["type"]),
                                "scope": after.get("scope"),
                                "created": _created(after, now),
                                "deleted": None,
                            },
                        },
                        upsert=True,
                    )
                )
            if explicit is not None:
                # one delete per series (a sensor-week is one request of ~1,000 instances)
                times: dict[tuple[str, str | None], list[int]] = {}
                for r in rows:
                    if r.deleted is None and r.instance is not None and "observedAt" in r.instance:
                        times.setdefault((r.attr, r.dataset_id), []).append(r.at)
                replaced.extend(
                    DeleteMany(
                        {
                            "t": tenant,
                            "eid": eid,
                            "attr": attr,
                            "at": {"$in": ats},
                            "ds": ds,
                            "deleted": None,
                        }
                    )
                    for (attr, ds), ats in times.items()
                )
            docs.extend((eid, r) for r in rows)
        if entries:
            await self.db.history_entities.bulk_write(entries, ordered=True, session=session)
        if replaced:
            await self.db.history.bulk_write(replaced, ordered=True, session=session)
        if docs:
            first = self._take(len(docs))
            while first is None:
                if session is not None:
                    raise NumbersNeeded(len(docs))
                await self.reserve(len(docs))
                first = self._take(len(docs))
            await self.insert_rows(
                [_row_doc(tenant, eid, first + i, r) for i, (eid, r) in enumerate(docs)],
                session,
            )

    async def insert_rows(self, rows: list[Doc], session: AsyncClientSession | None) -> None:
        """Insert attribute instances (one round trip)."""
        await self.db.history.insert_many(rows, ordered=False, session=session)

    # -- reads ------------------------------------------------------------------------------

    async def entities(
        self, tenant: str, query: EntityQuery, window: HistoryQuery | None
    ) -> tuple[list[HistoryEntity], int | None]:
        """Candidates come from ``history_entities`` (ids, types through
        ``tenant_types``); the attributes and time window are then checked on those
        candidates' series only (``series_at``: ``t, eid`` equal, a ``distinct`` of
        ``eid`` can skip from one entity to the next), never on the tenant's whole
        history."""
        flt: Doc = {"t": tenant}
        if query.ids:
            flt["eid"] = {"$in": list(query.ids)}
        if query.types:
            flt["$or"] = [{"types": {"$all": list(conj)}} for conj in query.types]
        candidates: list[Doc] = []
        async for entry in self.db.history_entities.find(flt).sort("eid", ASCENDING):
            if not _selected(query, entry):
                continue
            if query.selectors and not any(_selected(s, entry) for s in query.selectors):
                continue
            candidates.append(entry)
        series: list[Doc] = []
        if query.attrs:
            series.append({"attr": {"$in": list(query.attrs)}})
        if window is not None:
            _, tflt = _time_filter(window)
            wflt: Doc = dict(tflt)
            if window.attrs:
                wflt["attr"] = {"$in": list(window.attrs)}
            series.append(wflt)
        for extra in series:
            kept: set[str] = set()
            for i in range(0, len(candidates), _CANDIDATES_CHUNK):
                eids = [c["eid"] for c in candidates[i : i + _CANDIDATES_CHUNK]]
                kept.update(
                    await self.db.history.distinct(
                        "eid", {"t": tenant, "eid": {"$in": eids}, **extra}
                    )
                )
            candidates = [c for c in candidates if c["eid"] in kept]
        page = candidates[query.offset : query.offset + query.limit]
        found = [
            HistoryEntity(
                entry["eid"],
                list(entry["types"]),
                entry.get("scope"),
                entry["created"],
                entry["modified"],
                entry.get("deleted"),
            )
            for entry in page
        ]
        return found, len(candidates) if query.count else None

    async def _attrs(self, tenant: str, eid: str, wanted: Sequence[str] | None) -> list[str]:
        attrs = await self.db.history.distinct("attr", {"t": tenant, "eid": eid})
        return sorted(a for a in attrs if wanted is None or a in wanted)

    async def history(self, tenant: str, entity_ids: Sequence[str], query: HistoryQuery) -> History:
        field, tflt = _time_filter(query)
        out: History = {}
        for eid in entity_ids:
            per_attr: dict[str, list[HistoryRow]] = {}
            for attr in await self._attrs(tenant, eid, query.attrs):
                flt = {"t": tenant, "eid": eid, "attr": attr, **tflt}
                if query.last_n:
                    cursor = (
                        self.db.history.find(flt)
                        .sort([(field, DESCENDING), ("_id", DESCENDING)])
                        .limit(min(query.last_n, query.limit + 1))
                    )
                    docs = [d async for d in cursor]
                    docs.reverse()
                else:
                    cursor = (
                        self.db.history.find(flt)
                        .sort([(field, ASCENDING), ("_id", ASCENDING)])
                        .limit(query.limit + 1)
                    )
                    docs = [d async for d in cursor]
                if docs:
                    per_attr[attr] = [_row(d) for d in docs]
            out[eid] = per_attr
        return out

    async def aggregate(
        self,
        tenant: str,
        entity_ids: Sequence[str],
        query: HistoryQuery,
        methods: Sequence[str],
        period: Duration | None,
    ) -> Aggregates:
        """One aggregation pipeline per entity, run a few at a time: only the
        aggregates of each (attribute, period) come back (``_AggregatePlan``)."""
        plan = _AggregatePlan(query, methods, period)
        gate = asyncio.Semaphore(_PARALLEL_ENTITIES)

        async def one(eid: str) -> dict[str, AttrAggregate] | None:
            async with gate:
                return await self._aggregate_entity(tenant, eid, plan)

        found = await asyncio.gather(*(one(eid) for eid in entity_ids))
        return {eid: aggs for eid, aggs in zip(entity_ids, found, strict=True) if aggs is not None}

    async def _aggregate_entity(
        self, tenant: str, eid: str, plan: _AggregatePlan
    ) -> dict[str, AttrAggregate] | None:
        # attributes asked for that the entity lacks are empty index ranges: no look-up
        attrs = list(plan.query.attrs or ()) or await self._attrs(tenant, eid, None)
        if not attrs:
            return None
        match: Doc = {"t": tenant, "eid": eid, "attr": {"$in": attrs}, **plan.time_filter}
        field = plan.field
        boundaries: list[int] | None = None
        key: Any = None  # the period of an instance, as an expression (one without)
        if plan.period is not None:
            # the first and last instance in the range: an index seek each, as on SQLite
            lo, hi = await asyncio.gather(
                self._end(match, field, ASCENDING), self._end(match, field, DESCENDING)
            )
            if lo is None or hi is None:
                return None
            boundaries = plan.period.boundaries(lo, hi + 1, limit=_MAX_PERIODS)
            match = plan.narrowed(match, lo, hi)
            if plan.period.months:
                key = _calendar_period(field, boundaries)
            else:
                # the period's start, lo + k * us: exact integer arithmetic on int64
                key = {
                    "$subtract": [
                        f"${field}",
                        {"$mod": [{"$subtract": [f"${field}", lo]}, plan.period.us]},
                    ]
                }
        groups = await (
            await self.db.history.aggregate(
                [
                    {"$match": match},
                    {"$group": {"_id": {"a": "$attr", "p": key}, **plan.accumulators}},
                    *([{"$project": plan.projection}] if plan.projection else []),
                    {"$sort": {"_id.a": ASCENDING, "_id.p": ASCENDING}},
                ]
            )
        ).to_list()
        if not groups:
            return None
        spans = _spans(plan, groups, boundaries)
        kinds = await self._kinds(tenant, eid, plan, groups)
        per_attr: dict[str, AttrAggregate] = {}
        for group in groups:
            attr = group["_id"]["a"]
            start, end = spans[group["_id"]["p"]]
            agg = per_attr.get(attr)
            if agg is None:
                agg = per_attr[attr] = AttrAggregate(kinds[attr])
            for m in plan.methods:
                value = _method_value(m, group)
                if value is not _SKIP:
                    agg.values.setdefault(m, []).append((value, start, end))
        return per_attr

    async def _end(self, match: Doc, field: str, order: int) -> int | None:
        """The first (or last) time in the range: one seek of ``series_at`` per
        attribute (merged by MongoDB for the ``$in``)."""
        doc = await self.db.history.find_one(match, {field: 1}, sort=[(field, order)])
        return None if doc is None else int(doc[field])

    async def _kinds(
        self, tenant: str, eid: str, plan: _AggregatePlan, groups: list[Doc]
    ) -> dict[str, str]:
        """Each attribute's kind (Property, ...) from a non-deleted instance: the
        groups carry one unless they are of deleted instances."""
        kinds: dict[str, str] = {}
        for group in groups:
            kinds.setdefault(group["_id"]["a"], group.get("k") or "")
        for attr, kind in kinds.items():
            if plan.field == "deleted" or not kind:
                doc = await self.db.history.find_one(
                    {"t": tenant, "eid": eid, "attr": attr, "deleted": None}, {"doc.type": 1}
                )
                kind = (doc or {}).get("doc", {}).get("type") or ""
            kinds[attr] = str(kind or "Property")
        return kinds

    # -- edits ------------------------------------------------------------------------------

    async def delete(
        self,
        tenant: str,
        eid: str,
        *,
        attr: str | None,
        dataset_id: str | AnyDataset | None,
        instance_id: str | None,
    ) -> int:
        if attr is None:
            res = await self.db.history_entities.delete_one({"_id": {"t": tenant, "i": eid}})
            await self.db.history.delete_many({"t": tenant, "eid": eid})
            return res.deleted_count
        flt: Doc = {"t": tenant, "eid": eid, "attr": attr, "deleted": None}
        if instance_id is not None:
            flt.update(_instance_filter(instance_id))
        elif dataset_id is not ANY_DATASET:
            flt["ds"] = dataset_id
        res = await self.db.history.delete_many(flt)
        return res.deleted_count

    async def replace(
        self, tenant: str, eid: str, attr: str, instance_id: str, row: HistoryRow
    ) -> bool:
        num, vkey = row.stored_value()
        res = await self.db.history.update_one(
            {
                "t": tenant,
                "eid": eid,
                "attr": attr,
                "deleted": None,
                **_instance_filter(instance_id),
            },
            {
                "$set": {
                    "doc": escape_doc(row.instance),
                    "num": num,
                    "vkey": vkey.decode() if vkey else None,
                    "at": row.at,
                    "modified": row.modified,
                    "ds": row.dataset_id,
                }
            },
        )
        return res.matched_count > 0

    async def expire(self, policy: HistoryPolicy, now: int) -> int:
        gone = 0
        pairs = await (
            await self.db.history_entities.aggregate(
                [
                    {"$unwind": "$types"},
                    {"$group": {"_id": {"t": "$t", "type": "$types"}, "eids": {"$push": "$eid"}}},
                ]
            )
        ).to_list()
        for pair in pairs:
            tenant, etype = pair["_id"]["t"], pair["_id"]["type"]
            cutoff = policy.cutoffs(tenant, [etype], now).get(etype)
            if cutoff is None:
                continue
            res = await self.db.history.delete_many(
                {"t": tenant, "eid": {"$in": pair["eids"]}, "at": {"$lt": cutoff}}
            )
            gone += res.deleted_count
        return gone


#: instance numbers reserved at a time
_BLOCK: Final = 1000
#: entities aggregated at once (each a few round trips; the pool has room for more)
_PARALLEL_ENTITIES: Final = 8
#: entity ids per ``distinct`` when checking candidates' series
_CANDIDATES_CHUNK: Final = 1000
#: periods one aggregation may have (as on SQLite)
_MAX_PERIODS: Final = 10_000
_SKIP: Final = object()

#: per method, the ``$group`` accumulators it needs (over ``num``, the numeric value:
#: non-numeric instances have ``num: null``, which these accumulators ignore)
_ACCUMULATORS: Final[dict[str, Doc]] = {
    "totalCount": {},
    "distinctCount": {"d": {"$addToSet": {"$ifNull": ["$num", "$vkey"]}}},
    "sum": {"s": {"$sum": "$num"}},
    "avg": {"avg": {"$avg": "$num"}},
    "min": {"lo_v": {"$min": "$num"}},
    "max": {"hi_v": {"$max": "$num"}},
    "sumsq": {"sq": {"$sum": {"$multiply": ["$num", "$num"]}}},
    "stddev": {"sd": {"$stdDevPop": "$num"}},
}
_METHOD_FIELDS: Final = {
    "totalCount": "n",
    "distinctCount": "d",
    "sum": "s",
    "avg": "avg",
    "min": "lo_v",
    "max": "hi_v",
    "sumsq": "sq",
    "stddev": "sd",
}


class _AggregatePlan:
    """What an aggregation asks, as MongoDB pipeline parts shared by every entity."""

    def __init__(
        self, query: HistoryQuery, methods: Sequence[str], period: Duration | None
    ) -> None:
        self.query = query
        self.methods = list(methods)
        self.period = period
        self.field, self.time_filter = _time_filter(query)
        # n and nums tell empty and non-numeric periods apart; first and last give the
        # one period's bounds without aggrPeriodDuration; k the attribute's kind
        self.accumulators: Doc = {
            "n": {"$sum": 1},
            "nums": {"$sum": {"$cond": [{"$isNumber": "$num"}, 1, 0]}},
            "first": {"$min": f"${self.field}"},
            "last": {"$max": f"${self.field}"},
            "k": {"$first": "$doc.type"},
        }
        for m in self.methods:
            self.accumulators.update(_ACCUMULATORS[m])
        self.projection: Doc = {}
        if "distinctCount" in self.methods:  # only the count of the set travels back
            self.projection = {name: 1 for name in self.accumulators}
            self.projection["d"] = {"$size": {"$setDifference": ["$d", [None]]}}

    def narrowed(self, match: Doc, lo: int, hi: int) -> Doc:
        """``match`` cut to [lo, hi], the instances the periods were made for (an
        instance written meanwhile outside them is not counted in a wrong period)."""
        rng = dict(match.get(self.field) or {})
        rng.update({"$gte": lo, "$lte": hi})
        return {**match, self.field: rng}


def _calendar_period(field: str, boundaries: Sequence[int]) -> Doc:
    """The index of the period holding ``field`` for periods of calendar months: a
    ``$switch`` over the precomputed boundaries (a month has no fixed length in µs).
    ``$bucket`` would do the same but groups by nothing else, and we group by
    attribute too."""
    return {
        "$switch": {
            "branches": [
                {"case": {"$lt": [f"${field}", end]}, "then": k}
                for k, end in enumerate(boundaries[1:])
            ],
            "default": len(boundaries) - 1,
        }
    }


def _spans(
    plan: _AggregatePlan, groups: Sequence[Doc], boundaries: Sequence[int] | None
) -> dict[Any, tuple[int, int]]:
    """Each group's period key -> (start, end) in µs."""
    query = plan.query
    if plan.period is None:
        lo = min(int(g["first"]) for g in groups)
        hi = max(int(g["last"]) for g in groups)
        start = query.time_at if query.timerel in ("after", "between") else None
        end = query.end_time_at if query.timerel == "between" else None
        return {None: (start if start is not None else lo, end if end is not None else hi + 1)}
    assert boundaries is not None
    if plan.period.months:
        return {k: (boundaries[k], boundaries[k + 1]) for k in range(len(boundaries) - 1)}
    us = plan.period.us
    return {g["_id"]["p"]: (g["_id"]["p"], g["_id"]["p"] + us) for g in groups}


def _method_value(method: str, group: Doc) -> Any:
    """A method's value from its group, or ``_SKIP`` for a numeric method over a
    period without numbers (as SQLite leaves those out)."""
    if method not in ("totalCount", "distinctCount") and not group["nums"]:
        return _SKIP
    return group[_METHOD_FIELDS[method]]
