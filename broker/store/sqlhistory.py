"""Attribute history on SQLite: tables, recording inside the write transaction, queries.

Layout: ``history_series`` numbers each (tenant, entity, attribute) once; ``history``
holds one row per attribute instance in a table clustered by (series, time, instance
number) (``WITHOUT ROWID``): a time range of one attribute of one entity is one range
of the table itself, with no index beside it. Rows are kept small, since a store may
hold hundreds of millions of them:

* times are integer microseconds; ``createdAt`` is kept as its distance from the
  instance's time (``cd``) and ``modifiedAt`` as its distance from ``createdAt``
  (``md``, NULL when equal); ``created`` and ``modified`` are virtual columns that add
  them back;
* the number aggregations use (``num``, a virtual column) is kept as a decimal
  mantissa and scale (``nv``, ``sc``: 23.45 is 2345 and 2) when that gives back the
  very same float, else as the float itself in ``nv``;
* the instance is kept as JSON in ``doc``, unless it is exactly what a template
  rebuilds from the number and the time: then ``doc`` is the template's small integer
  (``TEMPLATES``), which SQLite stores in the record header alone. A reading such as
  ``{"type": "Property", "value": 23.45, "observedAt": "..."}`` then takes about
  40 bytes instead of 165.

Deletions are rows too (``deleted`` set, the value NGSI-LD Null). Instance numbers
(``hid``) come from ``history_counter`` and are never reused: they name instances
(``urn:ngsi-ld:Instance:<n>``). ``history_entities`` and ``history_types`` say which
entities (also deleted ones) and types have history, so a type's history is found
without touching the instances.

Rollups: ``history_daily`` keeps, per series and UTC day of ``at`` (observedAt or
write time), the count, numeric count, sum, min, max and sum of squares of the
instances, updated with every insert and rebuilt for the days an edit or deletion
touches. A numeric aggregation whose periods are whole days (``P1D``, ``P1M``, ... from
midnight) reads these instead of every instance: a month of a type's history is then
thousands of rows, not millions. Other periods read the instances.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import pairwise
from operator import itemgetter
from typing import Any

import orjson

from broker.model.entity import Entity, Instance
from broker.model.history import (
    Duration,
    HistoryPolicy,
    HistoryRow,
    changes,
    from_us,
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

#: powers of ten a mantissa may be scaled by (exact as floats)
_MAX_SCALE = 9
_DIVISOR = " ".join(f"WHEN {k} THEN 1e{k}" for k in range(_MAX_SCALE + 1))

#: The instances' table (see the module docstring); a migration builds it under
#: another name first.
_HISTORY_TABLE = f"""CREATE TABLE IF NOT EXISTS {{name}}(
    sid INTEGER NOT NULL, at INTEGER NOT NULL, hid INTEGER NOT NULL,
    deleted INTEGER, ds TEXT, nv, sc INTEGER, cd INTEGER NOT NULL, md INTEGER,
    vkey BLOB, iid TEXT, doc NOT NULL,
    num REAL GENERATED ALWAYS AS
        (CASE WHEN sc IS NULL THEN nv ELSE nv / CASE sc {_DIVISOR} END END) VIRTUAL,
    created INTEGER GENERATED ALWAYS AS (at + cd) VIRTUAL,
    modified INTEGER GENERATED ALWAYS AS (at + cd + coalesce(md, 0)) VIRTUAL,
    PRIMARY KEY(sid, at, hid)
) WITHOUT ROWID"""


def history_table(name: str) -> str:
    return _HISTORY_TABLE.replace("{name}", name)


#: The history tables, one statement each (a migration runs them inside its transaction).
STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS history_series(
    sid INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL, eid TEXT NOT NULL, attr TEXT NOT NULL,
    UNIQUE(tenant, eid, attr)
)""",
    history_table("history"),
    "CREATE INDEX IF NOT EXISTS history_iid ON history(sid, iid) WHERE iid IS NOT NULL",
    # the last instance number handed out (one row)
    """CREATE TABLE IF NOT EXISTS history_counter(
    one INTEGER PRIMARY KEY CHECK (one = 1), hid INTEGER NOT NULL
)""",
    # per series and day: what the numeric aggregates need (see rollups above)
    """CREATE TABLE IF NOT EXISTS history_daily(
    sid INTEGER NOT NULL, day INTEGER NOT NULL,
    total INTEGER NOT NULL, n INTEGER NOT NULL, s REAL, lo REAL, hi REAL, sq REAL,
    PRIMARY KEY(sid, day)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS history_entities(
    tenant TEXT NOT NULL, eid TEXT NOT NULL, types BLOB NOT NULL, scope BLOB,
    created INTEGER NOT NULL, modified INTEGER NOT NULL, deleted INTEGER,
    PRIMARY KEY(tenant, eid)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS history_types(
    tenant TEXT NOT NULL, type TEXT NOT NULL, eid TEXT NOT NULL,
    PRIMARY KEY(tenant, type, eid)
) WITHOUT ROWID""",
)
SCHEMA = ";\n".join(STATEMENTS) + ";\n"

#: the columns a row is inserted with
_COLUMNS = "sid, at, hid, deleted, ds, nv, sc, cd, md, vkey, iid, doc"

DAY = 86_400_000_000  # µs
#: aggregation methods the daily rollups answer (distinctCount needs the instances)
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
_DAILY = (
    "INSERT INTO history_daily(sid, day, total, n, s, lo, hi, sq)",
    "ON CONFLICT(sid, day) DO UPDATE SET total = total + excluded.total, n = n + excluded.n, "
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


#: Instances ``doc`` may name instead of holding them: a Property whose value is the
#: row's number (a float, an integer or a boolean), with the row's time as its
#: observedAt (codes 0-2) or without observedAt (codes 3-5), members in that order.
TEMPLATES = 6
_VALUE_KINDS = (float, int, bool)


def instance_of(doc: bytes | int, num: float | None, at: int) -> Instance:
    """The instance a row keeps: its JSON, or what its template rebuilds."""
    if not isinstance(doc, int):
        return orjson.loads(doc)  # type: ignore[no-any-return]
    assert num is not None, "a template row keeps its number"
    out: Instance = {"type": "Property", "value": _VALUE_KINDS[doc % 3](num)}
    if doc < 3:
        out["observedAt"] = from_us(at)
    return out


def _encoded(instance: Instance | None, num: float | None, at: int, doc: bytes) -> bytes | int:
    """``doc`` (the instance's JSON), or the template that rebuilds exactly these bytes."""
    if num is None or instance is None or instance.get("type") != "Property":
        return doc
    if num == 0 and math.copysign(1.0, num) < 0:  # SQLite gives -0.0 back as 0.0
        return doc
    keys = tuple(instance)
    if keys == ("type", "value", "observedAt"):
        base = 0
    elif keys == ("type", "value"):
        base = 3
    else:
        return doc
    value = instance["value"]
    code = base + (2 if isinstance(value, bool) else 1 if isinstance(value, int) else 0)
    return code if orjson.dumps(instance_of(code, num, at)) == doc else doc


def mantissa(num: float | None) -> tuple[float | int | None, int | None]:
    """``(nv, sc)`` for a number: an integer mantissa and a decimal scale when
    ``nv / 10**sc`` (as SQLite divides, in floats) is exactly ``num``, else ``num`` as
    is. Most readings have a few decimals, and their mantissa takes 1-3 bytes, not 8."""
    if num is None:
        return None, None
    text = repr(num)
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    if "e" in text or "n" in text or len(frac) > _MAX_SCALE:
        return num, None
    m = int(whole + frac)
    if not -(2**53) < m < 2**53 or (m == 0 and math.copysign(1.0, num) < 0):
        return num, None
    if float(m) / float(10 ** len(frac)) != num:
        return num, None
    return m, len(frac)


#: A history row as stored, without its series number: attr, datasetId, at, created,
#: modified, num, vkey, doc (the instance's JSON or its template), instanceId, deleted,
#: whether the instance has an observedAt, and the number as stored (nv, sc).
StoredRow = tuple[
    str,
    str | None,
    int,
    int,
    int,
    float | None,
    bytes | None,
    bytes | int,
    str | None,
    int | None,
    bool,
    float | int | None,
    int | None,
]


def stored_rows(rows: Sequence[HistoryRow]) -> list[StoredRow]:
    """``rows`` as they are stored. Plain data: a writer's sender can compute them."""
    out: list[StoredRow] = []
    for r in rows:
        num, vkey = r.stored_value()
        observed = r.instance is not None and "observedAt" in r.instance
        doc = _encoded(r.instance, num, r.at, orjson.dumps(r.instance))
        nv, sc = mantissa(num)
        out.append(
            (r.attr, r.dataset_id, r.at, r.created, r.modified, num, vkey,
             doc, r.iid, r.deleted, observed, nv, sc)
        )  # fmt: skip
    return out


def _insert_row(sid: int, hid: int, r: StoredRow) -> tuple[Any, ...]:
    """The values of ``_COLUMNS`` for stored row ``r``."""
    at, created, modified = r[2], r[3], r[4]
    return (
        sid, at, hid, r[9], r[1], r[11], r[12], created - at,
        modified - created or None, r[6], r[8], r[7],
    )  # fmt: skip


def _next_hids(conn: sqlite3.Connection, count: int) -> int:
    """Reserve ``count`` instance numbers; returns the first. In the write transaction."""
    row = conn.execute("SELECT hid FROM history_counter WHERE one=1").fetchone()
    top = int(row[0]) if row else 0
    conn.execute(
        "INSERT INTO history_counter(one, hid) VALUES (1, ?) "
        "ON CONFLICT(one) DO UPDATE SET hid=excluded.hid",
        (top + count,),
    )
    return top + 1


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
        # An explicit instance replaces a stored one with the same observedAt; the days
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
                    stale.setdefault(sid, set()).add(at // DAY)
        first = _next_hids(conn, len(keyed))
        insert_rows(
            conn,
            f"INSERT INTO history({_COLUMNS})",
            [_insert_row(sid, first + k, r) for k, (sid, r) in enumerate(keyed)],
        )
        for sid, days in stale.items():
            _rebuild_days(conn, sid, days)
        # the group's additions per series and day, summed in the order of the rows
        adds: dict[tuple[int, int], list[Any]] = {}
        for sid, r in keyed:
            day = r[2] // DAY
            if r[9] is not None or day in stale.get(sid, ()):
                continue
            num = r[5]
            add = adds.get((sid, day))
            if add is None:
                adds[(sid, day)] = (
                    [sid, day, 1, 1, num, num, num, num * num]
                    if num is not None
                    else [sid, day, 1, 0, None, None, None, None]
                )
                continue
            add[2] += 1
            if num is None:
                continue
            if add[3] == 0:
                add[3:] = [1, num, num, num, num * num]
            else:
                add[3] += 1
                add[4] += num
                add[5] = min(add[5], num)
                add[6] = max(add[6], num)
                add[7] += num * num
        insert_rows(conn, _DAILY[0], list(adds.values()), _DAILY[1])


def _rebuild_days(conn: sqlite3.Connection, sid: int, days: set[int] | None = None) -> None:
    """Recompute a series' rollups for some days (all with None) from its instances."""
    ranges: list[tuple[int | None, int | None]]
    if days is None:
        conn.execute("DELETE FROM history_daily WHERE sid=?", (sid,))
        ranges = [(None, None)]
    else:
        conn.executemany(
            "DELETE FROM history_daily WHERE sid=? AND day=?", [(sid, d) for d in days]
        )
        ranges = [(d * DAY, (d + 1) * DAY) for d in sorted(days)]
    for lo, hi in ranges:
        span = "" if lo is None else " AND at >= ? AND at < ?"
        conn.execute(
            "INSERT INTO history_daily(sid, day, total, n, s, lo, hi, sq) "
            "SELECT sid, at / ?, count(*), count(num), sum(num), min(num), max(num), "
            f"sum(num * num) FROM history WHERE sid=? AND deleted IS NULL{span} GROUP BY 2",
            (DAY, sid) if lo is None else (DAY, sid, lo, hi),
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


def _attrs_of(
    conn: sqlite3.Connection, tenant: str, eids: Sequence[str], wanted: Sequence[str] | None
) -> dict[str, dict[str, int]]:
    """:func:`_attrs` of many entities in one statement."""
    out: dict[str, dict[str, int]] = {}
    for eid, attr, sid in conn.execute(
        "SELECT eid, attr, sid FROM history_series WHERE tenant=? "
        "AND eid IN (SELECT value FROM json_each(?))",
        (tenant, orjson.dumps(list(eids))),
    ):
        if wanted is None or attr in wanted:
            out.setdefault(eid, {})[attr] = sid
    return out


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
        instance=instance_of(r[5], r[8], r[2]),
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
                "SELECT hid, ds, at, created, modified, doc, iid, deleted, num FROM history "
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
    what the methods need is computed. The entities' series, their first and last
    instances in the range and their kinds are read for all entities at once, and
    entities whose periods coincide read the daily rollups together."""
    col, clause, targs = _time_clause(query, "h.")
    # count(h.num) and sum(h.num) make stddev and tell numeric periods from others
    select = ", ".join(
        [_AGGR_SQL[m] for m in methods] + ["count(h.num)", "sum(h.num)", "sum(h.num * h.num)"]
    )
    series_of = _attrs_of(conn, tenant, entity_ids, query.attrs)
    # first and last instance in the range: two seeks per series (min() and max()
    # together in one query would scan the range)
    ends = {
        sid: (lo, hi)
        for sid, lo, hi in conn.execute(
            f"SELECT s.value, (SELECT {col} FROM history h WHERE h.sid=s.value{clause} "
            f"ORDER BY {col} ASC LIMIT 1), (SELECT {col} FROM history h WHERE h.sid=s.value"
            f"{clause} ORDER BY {col} DESC LIMIT 1) FROM json_each(?) s",
            (*targs, *targs, _json_ids(series_of)),
        )
        if lo is not None
    }
    kinds = _kinds(conn, list(ends))
    end = (
        query.end_time_at
        if query.timerel == "between"
        else query.time_at
        if query.timerel == "before"
        else None
    )
    out: Aggregates = {}
    from_rollups: dict[tuple[int, ...], dict[int, tuple[str, str]]] = {}
    plans: dict[tuple[int, int], tuple[list[int], bool]] = {}
    for eid in entity_ids:
        series = {attr: sid for attr, sid in series_of.get(eid, {}).items() if sid in ends}
        if not series:
            continue
        lo = min(ends[sid][0] for sid in series.values())
        hi = max(ends[sid][1] for sid in series.values())
        plan = plans.get((lo, hi))
        if plan is None:  # entities read together mostly share their first and last times
            if period is not None:
                periods = period.boundaries(lo, hi + 1, limit=10_000)
            else:
                start = query.time_at if query.timerel in ("after", "between") else None
                stop = query.end_time_at if query.timerel == "between" else None
                periods = [
                    start if start is not None else lo,
                    stop if stop is not None else hi + 1,
                ]
            plan = plans[lo, hi] = (periods, _rollups_answer(query, methods, periods))
        periods, rollups = plan
        if rollups:
            out[eid] = {}
            group = from_rollups.setdefault(tuple(periods), {})
            group.update((sid, (eid, attr)) for attr, sid in series.items())
            continue
        names = {sid: attr for attr, sid in series.items()}
        n = len(periods) - 1
        pargs: list[int] = []
        for k in range(n):
            pargs.extend([k, periods[k], periods[k + 1]])
        rows = conn.execute(
            f"WITH p(i, s, e) AS (VALUES {','.join('(?,?,?)' for _ in range(n))}) "
            f"SELECT h.sid, p.i, {select} FROM p JOIN history h ON h.sid IN "
            f"({','.join('?' * len(names))}) AND {col} >= p.s AND {col} < p.e{clause} "
            "GROUP BY h.sid, p.i ORDER BY h.sid, p.i",
            (*pargs, *names, *targs),
        ).fetchall()
        per_attr: dict[str, AttrAggregate] = {}
        for row in rows:
            sid, k, *stats = row
            nums, total, sumsq = stats[-3:]
            attr = names[sid]
            agg = per_attr.get(attr)
            if agg is None:
                agg = per_attr[attr] = AttrAggregate(kinds[sid])
            for m, value in zip(methods, stats, strict=False):
                if m == "stddev" and nums:
                    value = max(sumsq / nums - (total / nums) ** 2, 0.0) ** 0.5
                elif m not in ("totalCount", "distinctCount") and not nums:
                    continue
                agg.values.setdefault(m, []).append((value, periods[k], periods[k + 1]))
        out[eid] = per_attr
    for bounds, owners in from_rollups.items():
        for sid, agg in _from_rollups(conn, owners, kinds, methods, bounds, end).items():
            eid, attr = owners[sid]
            out[eid][attr] = agg
    return out


def _json_ids(series_of: Mapping[str, Mapping[str, int]]) -> bytes:
    """The series numbers of ``series_of`` as a JSON array (for ``json_each``)."""
    return orjson.dumps([sid for series in series_of.values() for sid in series.values()])


def _rollups_answer(query: HistoryQuery, methods: Sequence[str], periods: Sequence[int]) -> bool:
    """True when the daily rollups give exactly the aggregates asked for: numeric
    methods over observedAt, periods and the time range on whole (UTC) days."""
    if query.time_property != "observedAt" or not set(methods) <= _ROLLUP_METHODS:
        return False
    bounds: list[int | None] = [*periods]
    if query.time_at is not None and query.timerel in ("before", "between"):
        bounds.append(query.end_time_at if query.timerel == "between" else query.time_at)
    return all(b is not None and b % DAY == 0 for b in bounds)


def _from_rollups(
    conn: sqlite3.Connection,
    sids: Collection[int],
    kinds: Mapping[int, str],
    methods: Sequence[str],
    periods: Sequence[int],
    end: int | None,
) -> dict[int, AttrAggregate]:
    """The aggregates of the series ``sids`` from the rollups; the last period is cut
    at the range's ``end`` (on an hour) so no instance after the range counts."""
    n = len(periods) - 1
    in_sids = "h.sid IN (SELECT value FROM json_each(?))"
    wanted = orjson.dumps(sorted(sids))
    width = periods[1] - periods[0]
    rows: list[Any]
    if all(periods[k + 1] - periods[k] == width for k in range(n)):
        # periods of one length (every duration without months): one range read per
        # series in key order, each day's rollup put in its period by division (a
        # GROUP BY on that division would sort every row)
        first = periods[0] // DAY
        stop = periods[n] if end is None else min(periods[n], end)
        days = width // DAY
        rows = conn.execute(
            "SELECT h.sid, h.day, h.total, h.n, h.s, h.lo, h.hi, h.sq FROM history_daily h "
            f"WHERE {in_sids} AND h.day >= ? AND h.day < ?",
            (wanted, first, stop // DAY),
        ).fetchall()
        rows.sort(key=_SID_DAY)  # in key order already: one pass
        if days > 1:
            rows = _combined(rows, first, days)
            first = 0
    else:
        first = 0
        pargs: list[int] = []
        for k in range(n):
            stop = periods[k + 1] if end is None else min(periods[k + 1], end)
            pargs.extend([k, periods[k] // DAY, stop // DAY])
        rows = conn.execute(
            f"WITH p(i, s, e) AS (VALUES {','.join('(?,?,?)' for _ in range(n))}) "
            "SELECT h.sid, p.i, sum(h.total), sum(h.n), sum(h.s), min(h.lo), max(h.hi), "
            f"sum(h.sq) FROM p JOIN history_daily h ON {in_sids} "
            "AND h.day >= p.s AND h.day < p.e GROUP BY h.sid, p.i ORDER BY h.sid, p.i",
            (*pargs, wanted),
        ).fetchall()
    # rows: (sid, period number + first, sums...) in (sid, period) order
    bounds = list(pairwise(periods))
    getters = [(m, _ROLLUP_VALUES[m]) for m in methods]
    out: dict[int, AttrAggregate] = {}
    current = None
    lists: list[tuple[str, Callable[..., Any], list[tuple[Any, int, int]]]] = []
    for sid, k, *sums in rows:
        if sid != current:
            current = sid
            agg = out[sid] = AttrAggregate(kinds[sid])
            lists = [(m, get, agg.values.setdefault(m, [])) for m, get in getters]
        start, stop = bounds[k - first]
        for m, get, values in lists:
            if sums[1] or m == "totalCount":  # no numbers: only a count
                values.append((get(*sums), start, stop))
    for agg in out.values():
        for m in [m for m, values in agg.values.items() if not values]:
            del agg.values[m]
    return out


def _stddev(total: int, n: int, s: float, lo: float, hi: float, sq: float) -> float:
    return float(max(sq / n - (s / n) ** 2, 0.0) ** 0.5)


#: each method's value from a rollup sum (total, n, s, lo, hi, sq)
_ROLLUP_VALUES: dict[str, Callable[..., Any]] = {
    "totalCount": lambda total, n, s, lo, hi, sq: total,
    "sum": lambda total, n, s, lo, hi, sq: s,
    "avg": lambda total, n, s, lo, hi, sq: s / n,
    "min": lambda total, n, s, lo, hi, sq: lo,
    "max": lambda total, n, s, lo, hi, sq: hi,
    "sumsq": lambda total, n, s, lo, hi, sq: sq,
    "stddev": _stddev,
}


_SID_DAY = itemgetter(0, 1)


def _none_sum(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


def _combined(rows: list[Any], first: int, days: int) -> list[Any]:
    """Daily rollup rows ``(sid, day, total, n, s, lo, hi, sq)`` in (sid, day) order as
    rows ``(sid, period, ...)`` of periods of ``days`` days from day ``first``, the days
    of one period summed (as SQL's sum/min/max would: NULLs, the days without numbers,
    left out)."""
    out: list[list[Any]] = []
    for sid, day, total, n, s, lo, hi, sq in rows:
        k = (day - first) // days
        last = out[-1] if out else None
        if last is None or last[0] != sid or last[1] != k:
            out.append([sid, k, total, n, s, lo, hi, sq])
            continue
        last[2] += total
        last[3] += n
        last[4] = _none_sum(last[4], s)
        last[5] = lo if last[5] is None else last[5] if lo is None else min(last[5], lo)
        last[6] = hi if last[6] is None else last[6] if hi is None else max(last[6], hi)
        last[7] = _none_sum(last[7], sq)
    return out


def _kinds(conn: sqlite3.Connection, sids: Sequence[int]) -> dict[int, str]:
    """The attribute type of each series (from one of its instances)."""
    out: dict[int, str] = {}
    for sid, doc in conn.execute(
        "SELECT s.value, (SELECT doc FROM history WHERE sid=s.value AND deleted IS NULL "
        "LIMIT 1) FROM json_each(?) s",
        (orjson.dumps(sids),),
    ):
        # templates (integers) are Properties
        kind = "Property" if doc is None or isinstance(doc, int) else orjson.loads(doc).get("type")
        out[sid] = str(kind or "Property")
    return out


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
        for table in ("history", "history_daily"):
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
    days = {r[0] // DAY for r in conn.execute(f"SELECT at FROM history WHERE {where}", args)}
    gone = int(conn.execute(f"DELETE FROM history WHERE {where}", args).rowcount)
    if conn.execute("SELECT 1 FROM history WHERE sid=? LIMIT 1", (sid,)).fetchone() is None:
        conn.execute("DELETE FROM history_series WHERE sid=?", (sid,))
        conn.execute("DELETE FROM history_daily WHERE sid=?", (sid,))
    elif days:
        _rebuild_days(conn, sid, days)
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
    nv, sc = mantissa(num)
    # the instance keeps its createdAt: cd and md are distances from the new time
    cur = conn.execute(
        "UPDATE history SET doc=?, nv=?, sc=?, vkey=?, at=?, cd=at + cd - ?, "
        "md=nullif(? - (at + cd), 0), ds=? "
        f"WHERE sid=? AND deleted IS NULL AND {clause}",
        (
            _encoded(row.instance, num, row.at, orjson.dumps(row.instance)),
            nv,
            sc,
            vkey,
            row.at,
            row.at,
            row.modified,
            row.dataset_id,
            sid,
            *iargs,
        ),
    )
    _rebuild_days(conn, sid, {old[0] // DAY, row.at // DAY})
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
            conn.execute("DELETE FROM history_daily WHERE sid=? AND day < ?", (sid, cutoff // DAY))
            if cutoff % DAY:
                _rebuild_days(conn, sid, {cutoff // DAY})
    return gone
