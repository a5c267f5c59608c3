"""Attribute history on SQLite: tables, recording inside the write transaction, queries.

Rollups: ``history_hourly`` keeps, per series and hour of ``at`` (observedAt or write
time), the count, numeric count, sum, min, max and sum of squares of the instances,
updated with every insert and rebuilt for the hours an edit or deletion touches. A
numeric aggregation whose periods are whole hours (``PT1H``, ``P1D``, ... from an
hour boundary) reads these instead of every instance: a month of a type's history is
then hundreds of rows, not hundreds of thousands.

Layout: ``history_series`` numbers each (tenant, entity, attribute) once; ``history``
holds one row per attribute instance, keyed by that number, with its times as
integer microseconds. The index ``(sid, at, num)`` makes a time range of one
attribute of one entity a single index range scan that also covers aggregation, and
keeps rows small (no repeated entity ids or IRIs: ~150 bytes an instance). Deletions
are rows too (``deleted`` set, the value NGSI-LD Null). ``history_entities`` and
``history_types`` say which entities (also deleted ones) and types have history, so
a type's history is found without touching the instances. Row numbers come from
AUTOINCREMENT and are never reused: they name instances (``urn:ngsi-ld:Instance:<n>``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

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
)
from broker.store.sqlbatch import insert_rows, max_id, rows_in
from broker.store.sqlindex import EntityTable, selection_sql

SCHEMA = """
CREATE TABLE IF NOT EXISTS history_series(
    sid INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL, eid TEXT NOT NULL, attr TEXT NOT NULL,
    UNIQUE(tenant, eid, attr)
);
CREATE TABLE IF NOT EXISTS history(
    hid INTEGER PRIMARY KEY AUTOINCREMENT,
    sid INTEGER NOT NULL, ds TEXT,
    at INTEGER NOT NULL, created INTEGER NOT NULL, modified INTEGER NOT NULL,
    num REAL, vkey BLOB, doc BLOB NOT NULL, iid TEXT, deleted INTEGER
);
CREATE INDEX IF NOT EXISTS history_at ON history(sid, deleted, at, num);
-- per series and hour: what the numeric aggregates need (see rollups below)
CREATE TABLE IF NOT EXISTS history_hourly(
    sid INTEGER NOT NULL, hour INTEGER NOT NULL,
    total INTEGER NOT NULL, n INTEGER NOT NULL, s REAL, lo REAL, hi REAL, sq REAL,
    PRIMARY KEY(sid, hour)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_iid ON history(sid, iid) WHERE iid IS NOT NULL;
CREATE TABLE IF NOT EXISTS history_entities(
    tenant TEXT NOT NULL, eid TEXT NOT NULL, types BLOB NOT NULL, scope BLOB,
    created INTEGER NOT NULL, modified INTEGER NOT NULL, deleted INTEGER,
    PRIMARY KEY(tenant, eid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_types(
    tenant TEXT NOT NULL, type TEXT NOT NULL, eid TEXT NOT NULL,
    PRIMARY KEY(tenant, type, eid)
) WITHOUT ROWID;
"""

HOUR = 3_600_000_000  # µs
#: aggregation methods the hourly rollups answer (distinctCount needs the instances)
_ROLLUP_METHODS = frozenset({"totalCount", "sum", "avg", "min", "max", "sumsq", "stddev"})

_TIME_COLUMNS = {
    "observedAt": "at",
    "createdAt": "created",
    "modifiedAt": "modified",
    "deletedAt": "deleted",
}


def _entity_times(ent: Entity, now: int) -> int:
    created = ent.get("createdAt")
    return to_us(created) if isinstance(created, str) else now


#: ``history_entities`` upserts. ``put`` sets what the entity is now (new entity, or its
#: types or scope changed); ``touch`` only moves ``modified`` on, inserting the whole
#: entry if the history was deleted (temporal API) while the entity stayed.
_ENTRY = "INSERT INTO history_entities(tenant, eid, types, scope, created, modified, deleted)"
_PUT = (
    "ON CONFLICT(tenant, eid) DO UPDATE SET types=excluded.types, scope=excluded.scope, "
    "modified=excluded.modified, deleted=excluded.deleted"
)
_TOUCH = (
    "ON CONFLICT(tenant, eid) DO UPDATE SET modified=excluded.modified, deleted=excluded.deleted"
)
_DELETED = "UPDATE history_entities SET deleted=?, modified=? WHERE tenant=? AND eid=?"
_HOURLY = (
    "INSERT INTO history_hourly(sid, hour, total, n, s, lo, hi, sq)",
    "ON CONFLICT(sid, hour) DO UPDATE SET total = total + excluded.total, n = n + excluded.n, "
    "s = CASE WHEN excluded.n THEN coalesce(s, 0) + excluded.s ELSE s END, "
    "lo = CASE WHEN excluded.n AND (lo IS NULL OR excluded.lo < lo) THEN excluded.lo "
    "ELSE lo END, "
    "hi = CASE WHEN excluded.n AND (hi IS NULL OR excluded.hi > hi) THEN excluded.hi "
    "ELSE hi END, "
    "sq = CASE WHEN excluded.n THEN coalesce(sq, 0) + excluded.sq ELSE sq END",
)


class Series:
    """Series numbers: (tenant, entity, attribute) -> sid, with the ones the writer has
    seen cached. The writer clears the cache whenever a transaction or savepoint rolls
    back (a number it handed out may be gone), when history is deleted, and when another
    connection to the file has committed (it may have deleted history)."""

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self._known: dict[tuple[str, str, str], int] = {}

    def forget(self) -> None:
        self._known.clear()

    def get_many(
        self, conn: sqlite3.Connection, keys: set[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], int]:
        """The numbers of ``keys``, creating the missing series: a look-up per few hundred
        entities and one insert statement, whatever the number of attributes. Runs in the
        write transaction (which holds SQLite's write lock, so numbering from the current
        maximum cannot race another process)."""
        out: dict[tuple[str, str, str], int] = {}
        missing: dict[str, set[str]] = {}
        for key in keys:
            sid = self._known.get(key)
            if sid is None:
                missing.setdefault(key[0], set()).add(key[1])
            else:
                out[key] = sid
        if not missing:
            return out
        for tenant, eids in missing.items():
            for eid, attr, sid in rows_in(
                conn,
                "SELECT eid, attr, sid FROM history_series WHERE tenant=? AND eid IN ({})",
                list(eids),
                tenant,
            ):
                if (tenant, eid, attr) in keys:
                    out[(tenant, eid, attr)] = int(sid)
        new = [k for k in keys if k not in out]
        if new:
            top = max_id(conn, "history_series", "sid")
            numbered = [(top + i, *k) for i, k in enumerate(new, 1)]
            insert_rows(conn, "INSERT INTO history_series(sid, tenant, eid, attr)", numbered)
            for sid, tenant, eid, attr in numbered:
                out[(tenant, eid, attr)] = sid
        if len(self._known) + len(out) > self.size:
            self._known.clear()
        self._known.update(out)
        return out


#: A history row as stored, without its series number: attr, datasetId, at, created,
#: modified, num, vkey, doc (the instance as JSON), instanceId, deleted, and whether
#: the instance has an observedAt.
StoredRow = tuple[
    str, str | None, int, int, int, float | None, bytes | None, bytes, str | None, int | None, bool
]


def stored_rows(rows: Sequence[HistoryRow]) -> list[StoredRow]:
    """``rows`` as they are stored. Plain data: a writer's sender can compute them."""
    out: list[StoredRow] = []
    for r in rows:
        num, vkey = r.stored_value()
        observed = r.instance is not None and "observedAt" in r.instance
        out.append(
            (r.attr, r.dataset_id, r.at, r.created, r.modified, num, vkey,
             orjson.dumps(r.instance), r.iid, r.deleted, observed)
        )  # fmt: skip
    return out


class GroupHistory:
    """The history of a group of entity writes, gathered while the writer applies them
    and then written with one statement per table (:meth:`write`), in the same
    transaction. An entity written several times in the group gets one
    ``history_entities`` entry (its last state) and every instance, in order."""

    def __init__(self, policy: HistoryPolicy) -> None:
        self.policy = policy
        #: per (tenant, eid): (statement, parameters) of its history_entities entry
        self._entities: dict[tuple[str, str], tuple[str, list[Any]]] = {}
        self._types: list[tuple[str, str, str]] = []
        self._rows: list[tuple[str, str, StoredRow]] = []
        #: indexes in ``_rows`` of explicit rows (temporal API): an observation sent
        #: again replaces the stored one with the same observedAt
        self._explicit: list[int] = []

    def add(
        self,
        tenant: str,
        eid: str,
        before: Entity | None,
        after: Entity | None,
        now: int,
        explicit: Sequence[HistoryRow] | None = None,
        changed: Sequence[StoredRow] | None = None,
    ) -> None:
        """What one write of one entity changed (``changed``, if the sender computed
        it; or the ``explicit`` rows the temporal API gives for it). Only explicit rows
        replace instances with the same observedAt: an entity write records what
        changed."""
        ent = after if after is not None else before
        if ent is None or not self.policy.records(tenant, ent["type"]):
            return
        if explicit is not None:
            rows = stored_rows(explicit)
        elif changed is not None:
            rows = list(changed)
        else:
            rows = stored_rows(changes(before, after, now))
        key = (tenant, eid)
        prev = self._entities.get(key)
        if after is None:
            if prev is None or prev[0] == _DELETED:
                self._entities[key] = (_DELETED, [now, now, tenant, eid])
            else:  # written earlier in this group, deleted now
                prev[1][5] = prev[1][6] = now
        elif (
            before is None
            or before.get("type") != after.get("type")
            or before.get("scope") != after.get("scope")
            or (rows and prev is not None and prev[0] == _DELETED)
        ):
            created = _entity_times(after, now)
            if prev is not None and prev[0] == _PUT:
                created = prev[1][4]
            self._entities[key] = (_PUT, self._entry(tenant, eid, after, created, now))
            self._types.extend((tenant, t, eid) for t in after["type"])
        elif rows:
            if prev is not None:
                prev[1][5] = now
            else:
                self._entities[key] = (
                    _TOUCH,
                    self._entry(tenant, eid, after, _entity_times(after, now), now),
                )
                self._types.extend((tenant, t, eid) for t in after["type"])
        if explicit is not None:
            self._explicit.extend(range(len(self._rows), len(self._rows) + len(rows)))
        self._rows.extend((tenant, eid, r) for r in rows)

    @staticmethod
    def _entry(tenant: str, eid: str, ent: Entity, created: int, now: int) -> list[Any]:
        scope = ent.get("scope")
        return [
            tenant,
            eid,
            orjson.dumps(ent["type"]),
            orjson.dumps(scope) if scope is not None else None,
            created,
            now,
            None,
        ]

    def write(self, conn: sqlite3.Connection, series: Series) -> None:
        by_statement: dict[str, list[list[Any]]] = {}
        for statement, params in self._entities.values():
            by_statement.setdefault(statement, []).append(params)
        for statement, params_list in by_statement.items():
            if statement == _DELETED:
                conn.executemany(statement, params_list)
            else:
                insert_rows(conn, _ENTRY, params_list, statement)
        insert_rows(conn, "INSERT OR IGNORE INTO history_types(tenant, type, eid)", self._types)
        if not self._rows:
            return
        sids = series.get_many(conn, {(t, e, r[0]) for t, e, r in self._rows})
        keyed = [(sids[(t, e, r[0])], r) for t, e, r in self._rows]
        # An explicit instance replaces a stored one with the same observedAt; the hours
        # whose rollups that made stale are recomputed (after the insert), the others
        # are added to as for entity writes. Replacing is rare: one statement finds out.
        stale: dict[int, set[int]] = {}
        replacing = [
            (keyed[i][0], keyed[i][1][2], keyed[i][1][1])
            for i in self._explicit
            if keyed[i][1][9] is None and keyed[i][1][10]
        ]
        if replacing:
            before = conn.total_changes
            conn.executemany(
                "DELETE FROM history WHERE sid=? AND at=? AND ds IS ? AND deleted IS NULL",
                replacing,
            )
            if conn.total_changes != before:
                for sid, at, _ in replacing:
                    stale.setdefault(sid, set()).add(at // HOUR)
        insert_rows(
            conn,
            "INSERT INTO history(sid, ds, at, created, modified, num, vkey, doc, iid, deleted)",
            [(sid, *r[1:10]) for sid, r in keyed],
        )
        for sid, hours in stale.items():
            _rebuild_hours(conn, sid, hours)
        insert_rows(
            conn,
            _HOURLY[0],
            [
                (sid, r[2] // HOUR, 1, 1, r[5], r[5], r[5], r[5] * r[5])
                if r[5] is not None
                else (sid, r[2] // HOUR, 1, 0, None, None, None, None)
                for sid, r in keyed
                if r[9] is None and r[2] // HOUR not in stale.get(sid, ())
            ],
            _HOURLY[1],
        )


def _rebuild_hours(conn: sqlite3.Connection, sid: int, hours: set[int] | None = None) -> None:
    """Recompute a series' rollups for some hours (all with None) from its instances."""
    ranges: list[tuple[int | None, int | None]]
    if hours is None:
        conn.execute("DELETE FROM history_hourly WHERE sid=?", (sid,))
        ranges = [(None, None)]
    else:
        conn.executemany(
            "DELETE FROM history_hourly WHERE sid=? AND hour=?", [(sid, h) for h in hours]
        )
        ranges = [(h * HOUR, (h + 1) * HOUR) for h in sorted(hours)]
    for lo, hi in ranges:
        span = "" if lo is None else " AND at >= ? AND at < ?"
        conn.execute(
            "INSERT INTO history_hourly(sid, hour, total, n, s, lo, hi, sq) "
            "SELECT sid, at / ?, count(*), count(num), sum(num), min(num), max(num), "
            f"sum(num * num) FROM history WHERE sid=? AND deleted IS NULL{span} GROUP BY 2",
            (HOUR, sid) if lo is None else (HOUR, sid, lo, hi),
        )


# -- reads ----------------------------------------------------------------------------------------

#: the entities the history knows, as an entity selection probes them
_HISTORY_ENTITIES = EntityTable(
    tenant_column="h.tenant",
    id_column="h.eid",
    type_probe="EXISTS (SELECT 1 FROM history_types t WHERE t.tenant=? AND t.type=? AND t.eid=h.eid)",
    attr_probe="EXISTS (SELECT 1 FROM history_series a WHERE a.tenant=? AND a.eid=h.eid "
    "AND a.attr IN ({marks}))",
)


def entities(
    conn: sqlite3.Connection, tenant: str, query: EntityQuery, window: HistoryQuery | None
) -> tuple[list[HistoryEntity], int | None]:
    clauses, args = selection_sql(query, tenant, _HISTORY_ENTITIES)
    if window is not None:
        _, clause, wargs = _time_clause(window, "x.")
        attrs = ""
        if window.attrs:
            attrs = f" AND a.attr IN ({','.join('?' * len(window.attrs))})"
            args.extend(window.attrs)
        clauses.append(
            "EXISTS (SELECT 1 FROM history_series a JOIN history x ON x.sid=a.sid "
            f"WHERE a.tenant=h.tenant AND a.eid=h.eid{attrs}{clause})"
        )
        args.extend(wargs)
    where = " AND ".join(clauses)
    rows = conn.execute(
        "SELECT eid, types, scope, created, modified, deleted FROM history_entities h "
        f"WHERE {where} ORDER BY h.eid LIMIT ? OFFSET ?",
        [*args, query.limit, query.offset],
    ).fetchall()
    total = None
    if query.count:
        total = conn.execute(
            f"SELECT count(*) FROM history_entities h WHERE {where}", args
        ).fetchone()[0]
    return [
        HistoryEntity(
            r[0], orjson.loads(r[1]), orjson.loads(r[2]) if r[2] else None, r[3], r[4], r[5]
        )
        for r in rows
    ], total


def _attrs(
    conn: sqlite3.Connection, tenant: str, eid: str, wanted: Sequence[str] | None
) -> dict[str, int]:
    """The entity's attributes with history (those ``wanted``), with their series number."""
    return {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT attr, sid FROM history_series WHERE tenant=? AND eid=?", (tenant, eid)
        )
        if wanted is None or r[0] in wanted
    }


def _time_clause(query: HistoryQuery, alias: str = "") -> tuple[str, str, list[int]]:
    """The time column of ``query``'s time property and the SQL of its range.

    ``before`` is strict; ``after`` and ``between`` include their start."""
    col = alias + _TIME_COLUMNS[query.time_property]
    deleted = f"{alias}deleted IS {'NOT ' if query.time_property == 'deletedAt' else ''}NULL"
    clause = f" AND {deleted}"
    if query.timerel == "before" and query.time_at is not None:
        return col, f"{clause} AND {col} < ?", [query.time_at]
    if query.timerel == "after" and query.time_at is not None:
        return col, f"{clause} AND {col} >= ?", [query.time_at]
    if query.timerel == "between" and query.time_at is not None and query.end_time_at is not None:
        return col, f"{clause} AND {col} >= ? AND {col} < ?", [query.time_at, query.end_time_at]
    return col, clause, []


def _row(attr: str, r: Any) -> HistoryRow:
    return HistoryRow(
        attr=attr,
        dataset_id=r[1],
        at=r[2],
        created=r[3],
        modified=r[4],
        instance=orjson.loads(r[5]),
        iid=r[6],
        hid=r[0],
        deleted=r[7],
    )


def history(
    conn: sqlite3.Connection, tenant: str, entity_ids: Sequence[str], query: HistoryQuery
) -> History:
    col, clause, targs = _time_clause(query)
    out: History = {}
    for eid in entity_ids:
        per_attr: dict[str, list[HistoryRow]] = {}
        for attr, sid in _attrs(conn, tenant, eid, query.attrs).items():
            base = (
                "SELECT hid, ds, at, created, modified, doc, iid, deleted FROM history "
                f"WHERE sid=?{clause}"
            )
            if query.last_n:
                rows = conn.execute(
                    f"{base} ORDER BY {col} DESC, hid DESC LIMIT ?",
                    (sid, *targs, min(query.last_n, query.limit + 1)),
                ).fetchall()
                rows.reverse()
            else:
                rows = conn.execute(
                    f"{base} ORDER BY {col}, hid LIMIT ?", (sid, *targs, query.limit + 1)
                ).fetchall()
            if rows:
                per_attr[attr] = [_row(attr, r) for r in rows]
        out[eid] = per_attr
    return out


_AGGR_SQL = {
    "totalCount": "count(*)",
    "distinctCount": "count(DISTINCT coalesce(h.num, h.vkey))",
    "sum": "sum(h.num)",
    "avg": "avg(h.num)",
    "min": "min(h.num)",
    "max": "max(h.num)",
    "sumsq": "sum(h.num * h.num)",
    "stddev": "sum(h.num * h.num)",
}


def aggregate(
    conn: sqlite3.Connection,
    tenant: str,
    entity_ids: Sequence[str],
    query: HistoryQuery,
    methods: Sequence[str],
    period: Duration | None,
) -> Aggregates:
    """Per entity, periods start at its first instance in the time range (and the one
    period is the whole range without ``period``); empty periods are left out. Only
    what the methods need is computed, so avg/min/max/sum read the index alone."""
    col, clause, targs = _time_clause(query, "h.")
    # count(h.num) and sum(h.num) make stddev and tell numeric periods from others
    select = ", ".join(
        [_AGGR_SQL[m] for m in methods] + ["count(h.num)", "sum(h.num)", "sum(h.num * h.num)"]
    )
    out: Aggregates = {}
    for eid in entity_ids:
        series = _attrs(conn, tenant, eid, query.attrs)
        if not series:
            continue
        sids = list(series.values())
        names = {sid: attr for attr, sid in series.items()}
        marks = ",".join("?" * len(sids))
        # first and last instance in the range: two index seeks per series (min() and
        # max() together in one query would scan the range)
        ends = [
            conn.execute(
                f"SELECT {col} FROM history h WHERE h.sid=?{clause} ORDER BY {col} {order} LIMIT 1",
                (sid, *targs),
            ).fetchone()
            for sid in sids
            for order in ("ASC", "DESC")
        ]
        found = [e[0] for e in ends if e is not None]
        if not found:
            continue
        lo, hi = min(found), max(found)
        if period is not None:
            periods = period.boundaries(lo, hi + 1, limit=10_000)
        else:
            start = query.time_at if query.timerel in ("after", "between") else None
            end = query.end_time_at if query.timerel == "between" else None
            periods = [start if start is not None else lo, end if end is not None else hi + 1]
        n = len(periods) - 1
        if _rollups_answer(query, methods, periods):
            end = (
                query.end_time_at
                if query.timerel == "between"
                else query.time_at
                if query.timerel == "before"
                else None
            )
            out[eid] = _from_rollups(conn, names, methods, periods, end)
            continue
        pargs: list[int] = []
        for k in range(n):
            pargs.extend([k, periods[k], periods[k + 1]])
        rows = conn.execute(
            f"WITH p(i, s, e) AS (VALUES {','.join('(?,?,?)' for _ in range(n))}) "
            f"SELECT h.sid, p.i, {select} FROM p JOIN history h ON h.sid IN ({marks}) "
            f"AND {col} >= p.s AND {col} < p.e{clause} "
            "GROUP BY h.sid, p.i ORDER BY h.sid, p.i",
            (*pargs, *sids, *targs),
        ).fetchall()
        per_attr: dict[str, AttrAggregate] = {}
        for row in rows:
            sid, k, *stats = row
            nums, total, sumsq = stats[-3:]
            attr = names[sid]
            agg = per_attr.get(attr)
            if agg is None:
                agg = per_attr[attr] = AttrAggregate(_kind(conn, sid))
            for m, value in zip(methods, stats, strict=False):
                if m == "stddev" and nums:
                    value = max(sumsq / nums - (total / nums) ** 2, 0.0) ** 0.5
                elif m not in ("totalCount", "distinctCount") and not nums:
                    continue
                agg.values.setdefault(m, []).append((value, periods[k], periods[k + 1]))
        out[eid] = per_attr
    return out


def _rollups_answer(query: HistoryQuery, methods: Sequence[str], periods: Sequence[int]) -> bool:
    """True when the hourly rollups give exactly the aggregates asked for: numeric
    methods over observedAt, periods and the time range on whole hours."""
    if query.time_property != "observedAt" or not set(methods) <= _ROLLUP_METHODS:
        return False
    bounds: list[int | None] = [*periods]
    if query.time_at is not None and query.timerel in ("before", "between"):
        bounds.append(query.end_time_at if query.timerel == "between" else query.time_at)
    return all(b is not None and b % HOUR == 0 for b in bounds)


def _from_rollups(
    conn: sqlite3.Connection,
    names: dict[int, str],
    methods: Sequence[str],
    periods: Sequence[int],
    end: int | None,
) -> dict[str, AttrAggregate]:
    """The aggregates from the rollups; the last period is cut at the range's ``end``
    (on an hour) so no instance after the range counts."""
    n = len(periods) - 1
    pargs: list[int] = []
    for k in range(n):
        stop = periods[k + 1] if end is None else min(periods[k + 1], end)
        pargs.extend([k, periods[k] // HOUR, stop // HOUR])
    sids = list(names)
    rows = conn.execute(
        f"WITH p(i, s, e) AS (VALUES {','.join('(?,?,?)' for _ in range(n))}) "
        "SELECT h.sid, p.i, sum(h.total), sum(h.n), sum(h.s), min(h.lo), max(h.hi), sum(h.sq) "
        f"FROM p JOIN history_hourly h ON h.sid IN ({','.join('?' * len(sids))}) "
        "AND h.hour >= p.s AND h.hour < p.e GROUP BY h.sid, p.i ORDER BY h.sid, p.i",
        (*pargs, *sids),
    ).fetchall()
    out: dict[str, AttrAggregate] = {}
    for sid, k, total, nums, s, lo, hi, sq in rows:
        attr = names[sid]
        agg = out.get(attr)
        if agg is None:
            agg = out[attr] = AttrAggregate(_kind(conn, sid))
        for m in methods:
            if m == "totalCount":
                value: Any = total
            elif not nums:
                continue
            elif m == "sum":
                value = s
            elif m == "avg":
                value = s / nums
            elif m == "min":
                value = lo
            elif m == "max":
                value = hi
            elif m == "sumsq":
                value = sq
            else:
                value = max(sq / nums - (s / nums) ** 2, 0.0) ** 0.5
            agg.values.setdefault(m, []).append((value, periods[k], periods[k + 1]))
    return out


def _kind(conn: sqlite3.Connection, sid: int) -> str:
    row = conn.execute(
        "SELECT doc FROM history WHERE sid=? AND deleted IS NULL LIMIT 1", (sid,)
    ).fetchone()
    return str(orjson.loads(row[0]).get("type", "Property")) if row else "Property"


# -- history edits ------------------------------------------------------------------------------


def _instance_clause(instance_id: str) -> tuple[str, list[Any]]:
    hid = instance_number(instance_id)
    if hid is not None:
        return "(hid=? AND iid IS NULL OR iid=?)", [hid, instance_id]
    return "iid=?", [instance_id]


def delete(
    conn: sqlite3.Connection,
    tenant: str,
    eid: str,
    *,
    attr: str | None,
    dataset_id: str | AnyDataset | None,
    instance_id: str | None,
) -> int:
    if attr is None:
        found = conn.execute(
            "DELETE FROM history_entities WHERE tenant=? AND eid=?", (tenant, eid)
        ).rowcount
        for table in ("history", "history_hourly"):
            conn.execute(
                f"DELETE FROM {table} WHERE sid IN "
                "(SELECT sid FROM history_series WHERE tenant=? AND eid=?)",
                (tenant, eid),
            )
        for table in ("history_series", "history_types"):
            conn.execute(f"DELETE FROM {table} WHERE tenant=? AND eid=?", (tenant, eid))
        return int(found)
    sid = _attrs(conn, tenant, eid, [attr]).get(attr)
    if sid is None:
        return 0
    where = "sid=? AND deleted IS NULL"
    args: list[Any] = [sid]
    if instance_id is not None:
        clause, iargs = _instance_clause(instance_id)
        where += f" AND {clause}"
        args.extend(iargs)
    elif dataset_id is not ANY_DATASET:
        where += " AND ds IS ?"
        args.append(dataset_id)
    hours = {r[0] // HOUR for r in conn.execute(f"SELECT at FROM history WHERE {where}", args)}
    gone = int(conn.execute(f"DELETE FROM history WHERE {where}", args).rowcount)
    if conn.execute("SELECT 1 FROM history WHERE sid=? LIMIT 1", (sid,)).fetchone() is None:
        conn.execute("DELETE FROM history_series WHERE sid=?", (sid,))
        conn.execute("DELETE FROM history_hourly WHERE sid=?", (sid,))
    elif hours:
        _rebuild_hours(conn, sid, hours)
    return gone


def replace(
    conn: sqlite3.Connection,
    tenant: str,
    eid: str,
    attr: str,
    instance_id: str,
    row: HistoryRow,
) -> bool:
    sid = _attrs(conn, tenant, eid, [attr]).get(attr)
    if sid is None:
        return False
    clause, iargs = _instance_clause(instance_id)
    old = conn.execute(
        f"SELECT at FROM history WHERE sid=? AND deleted IS NULL AND {clause}", (sid, *iargs)
    ).fetchone()
    if old is None:
        return False
    num, vkey = row.stored_value()
    cur = conn.execute(
        "UPDATE history SET doc=?, num=?, vkey=?, at=?, modified=?, ds=? "
        f"WHERE sid=? AND deleted IS NULL AND {clause}",
        (
            orjson.dumps(row.instance),
            num,
            vkey,
            row.at,
            row.modified,
            row.dataset_id,
            sid,
            *iargs,
        ),
    )
    _rebuild_hours(conn, sid, {old[0] // HOUR, row.at // HOUR})
    return bool(cur.rowcount)


def expire(conn: sqlite3.Connection, policy: HistoryPolicy, now: int) -> int:
    gone = 0
    pairs = conn.execute("SELECT DISTINCT tenant, type FROM history_types").fetchall()
    for tenant, etype in pairs:
        cutoff = policy.cutoffs(tenant, [etype], now).get(etype)
        if cutoff is None:
            continue
        sids = [
            r[0]
            for r in conn.execute(
                "SELECT s.sid FROM history_series s JOIN history_types t "
                "ON t.tenant=s.tenant AND t.eid=s.eid WHERE t.tenant=? AND t.type=?",
                (tenant, etype),
            )
        ]
        for sid in sids:
            gone += conn.execute(
                "DELETE FROM history WHERE sid=? AND at < ?", (sid, cutoff)
            ).rowcount
            conn.execute(
                "DELETE FROM history_hourly WHERE sid=? AND hour < ?", (sid, cutoff // HOUR)
            )
            if cutoff % HOUR:
                _rebuild_hours(conn, sid, {cutoff // HOUR})
    return gone
