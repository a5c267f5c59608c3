"""The store's query results equal a brute-force evaluation over the same entities.

Random entities and random (resolved) q, scopeQ and geo queries; the reference is
``broker.query.evaluate``. Every backend runs this module (``make_store``).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.model.entity import Entity
from broker.model.query import (
    URI,
    AttrPath,
    Comparison,
    Date,
    DateTime,
    Exists,
    GeoQuery,
    Node,
    Range,
    Scalar,
    ScopePattern,
    all_of,
    any_of,
)
from broker.model.store import EntityQuery
from broker.query.evaluate import matches_geo, matches_q, matches_scope
from broker.store.base import Store
from broker.store.index import value_rows, value_rows_reference
from tests.broker.store.conftest import BACKENDS as ALL_BACKENDS

#: A store per example: the SQLite writer runs in a thread here, as the transport to
#: it does not change what queries find (``test_contract`` runs both).
BACKENDS = {name: make for name, make in ALL_BACKENDS.items() if name != "sqlite"}

T = "https://example.org/"
LOC = "https://uri.etsi.org/ngsi-ld/location"
OBS = "https://uri.etsi.org/ngsi-ld/observedBy"
ACC = T + "accuracy"
SMALL_INTS = st.integers(-5, 5)
NUMBERS = st.one_of(SMALL_INTS, st.sampled_from([0.5, -1.5, 2.0, 1e3]))
WORDS = st.sampled_from(
    [
        "komae",
        "Komae",
        "chofu",
        "a",
        "",
        "狛江",
        "2026-01-01",
        "12:00:00Z",
        "2026-01-01T00:00:00Z",
        "2026-06-01T09:00:00+09:00",
        "urn:ngsi-ld:X:1",
    ]
)
SCALARS: st.SearchStrategy[Scalar] = st.one_of(NUMBERS, WORDS, st.booleans())


def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **extra}


@st.composite
def points(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "type": "Point",
        "coordinates": [
            139.5 + draw(st.integers(0, 20)) / 1000,
            35.6 + draw(st.integers(0, 20)) / 1000,
        ],
    }


@st.composite
def boxes(draw: st.DrawFn) -> dict[str, Any]:
    x0, y0 = 139.5 + draw(st.integers(0, 15)) / 1000, 35.6 + draw(st.integers(0, 15)) / 1000
    w, h = draw(st.integers(1, 8)) / 1000, draw(st.integers(1, 8)) / 1000
    ring = [[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


@st.composite
def entities(draw: st.DrawFn, n: int) -> Entity:
    ent: Entity = {"id": f"urn:ngsi-ld:E:{n}", "type": [T + "Thing"]}
    if draw(st.booleans()):
        instances = [
            prop(
                draw(NUMBERS),
                observedAt=draw(st.sampled_from(["2026-01-01T00:00:00Z", "2026-03-01T12:00:00Z"])),
            )
        ]
        if draw(st.booleans()):
            instances[0][ACC] = prop(draw(NUMBERS))
        if draw(st.booleans()):
            instances[0]["createdAt"] = draw(
                st.sampled_from(["2026-01-01T00:00:00Z", "2026-05-01T00:00:00Z"])
            )
        if draw(st.booleans()):
            instances.append(prop(draw(SCALARS), datasetId="urn:ngsi-ld:Dataset:b", unitCode="CEL"))
        ent[T + "temp"] = instances
    if draw(st.booleans()):
        if draw(st.booleans()):
            ent[T + "name"] = [prop(draw(WORDS))]
        else:
            ent[T + "name"] = [
                {"type": "LanguageProperty", "languageMap": {"ja": draw(WORDS), "en": draw(WORDS)}}
            ]
    if draw(st.booleans()):
        ent[T + "tags"] = [prop(draw(st.lists(SCALARS, max_size=3)))]
    if draw(st.booleans()):
        info = {"a": draw(SCALARS), "b": {"c": draw(SCALARS)}}
        ent[T + "info"] = [
            prop(info) if draw(st.booleans()) else {"type": "JsonProperty", "json": info}
        ]
    if draw(st.booleans()):
        ent[T + "rel"] = [
            {
                "type": "Relationship",
                "object": draw(st.sampled_from(["urn:ngsi-ld:X:1", "urn:ngsi-ld:X:2"])),
                OBS: {"type": "Relationship", "object": "urn:ngsi-ld:P:1"},
            }
        ]
    if draw(st.booleans()):
        ent[LOC] = [{"type": "GeoProperty", "value": draw(st.one_of(points(), boxes()))}]
    if draw(st.booleans()):
        ent["scope"] = draw(
            st.lists(
                st.sampled_from(["/Tokyo/Komae", "/Tokyo/Chofu", "/Osaka"]),
                min_size=1,
                max_size=2,
                unique=True,
            )
        )
    return ent


PATHS = [
    AttrPath(T + "temp"),
    AttrPath(T + "temp", ("observedAt",)),
    AttrPath(T + "temp", ("unitCode",)),
    AttrPath(T + "temp", ("createdAt",)),
    AttrPath(T + "temp", (ACC,)),
    AttrPath(T + "name"),
    AttrPath(T + "name", (), ("ja",)),
    AttrPath(T + "tags"),
    AttrPath(T + "info", (), ("a",)),
    AttrPath(T + "info", (), ("b", "c")),
    AttrPath(T + "rel"),
    AttrPath(T + "rel", (OBS,)),
    AttrPath(T + "missing"),
]
LITERALS: st.SearchStrategy[Scalar] = st.one_of(
    SCALARS,
    st.sampled_from(
        [
            URI("urn:ngsi-ld:X:1"),
            DateTime("2026-02-01T00:00:00Z"),
            DateTime("2026-06-01T00:00:00Z"),
            Date("2026-01-01"),
        ]
    ),
)


@st.composite
def comparisons(draw: st.DrawFn) -> Node:
    path = draw(st.sampled_from(PATHS))
    kind = draw(st.sampled_from(["eq", "order", "range", "list", "pattern", "exists"]))
    if kind == "exists":
        return Exists(path, negated=draw(st.booleans()))
    if kind == "pattern":
        return Comparison(
            path,
            draw(st.sampled_from(["~=", "!~="])),
            draw(st.sampled_from(["^K", "mae", "[0-9]", "(?i)KOMAE"])),
        )
    if kind == "range":
        low, high = draw(
            st.one_of(st.tuples(NUMBERS, NUMBERS), st.tuples(WORDS, WORDS).filter(lambda p: True))
        )
        try:
            return Comparison(path, draw(st.sampled_from(["==", "!="])), Range(low, high))
        except ValueError:
            return Comparison(path, "==", low)
    if kind == "list":
        values = tuple(draw(st.lists(LITERALS, min_size=2, max_size=3)))
        return Comparison(path, draw(st.sampled_from(["==", "!="])), values)
    if kind == "order":
        ordered: st.SearchStrategy[Scalar] = st.one_of(
            NUMBERS, WORDS, st.sampled_from([DateTime("2026-02-01T00:00:00Z"), Date("2026-01-01")])
        )
        return Comparison(path, draw(st.sampled_from([">", ">=", "<", "<="])), draw(ordered))
    return Comparison(path, draw(st.sampled_from(["==", "!="])), draw(LITERALS))


def queries() -> st.SearchStrategy[Node]:
    return st.recursive(
        comparisons(),
        lambda inner: st.one_of(
            st.lists(inner, min_size=2, max_size=3).map(all_of),
            st.lists(inner, min_size=2, max_size=3).map(any_of),
        ),
        max_leaves=5,
    )


@st.composite
def geo_queries(draw: st.DrawFn) -> GeoQuery:
    rel = draw(
        st.sampled_from(
            ["near", "within", "contains", "intersects", "equals", "disjoint", "overlaps"]
        )
    )
    geometry = (
        draw(points())
        if rel in ("near", "contains", "equals") and draw(st.booleans())
        else draw(st.one_of(points(), boxes()))
    )
    if rel == "near":
        d = float(draw(st.sampled_from([0, 100, 500, 1500, 3000])))
        if draw(st.booleans()):
            return GeoQuery("near", geometry, LOC, max_distance=d)
        return GeoQuery("near", geometry, LOC, min_distance=d)
    return GeoQuery(rel, geometry, LOC)


def _put(ent: Entity) -> Callable[[Entity | None], Entity]:
    return lambda _current: ent


def run(make: Callable[[Path], Store], ents: list[Entity], query: EntityQuery) -> set[str]:
    async def main() -> set[str]:
        with tempfile.TemporaryDirectory() as tmp:
            store = make(Path(tmp))
            await store.open()
            try:
                await store.write("", [(e["id"], _put(e)) for e in ents])
                found, count = await store.query("", query)
                assert count == len(found)
                return {e["id"] for e in found}
            finally:
                await store.close()

    return asyncio.run(main())


def _entity_lists() -> st.SearchStrategy[list[Entity]]:
    return st.integers(1, 12).flatmap(
        lambda n: st.tuples(*(entities(i) for i in range(n))).map(list)
    )


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(ents=_entity_lists(), q=queries(), backend=st.sampled_from(sorted(BACKENDS)))
def test_q_matches_the_reference(ents: list[Entity], q: Node, backend: str) -> None:
    got = run(BACKENDS[backend], ents, EntityQuery(q=q, limit=1000, count=True))
    assert got == {e["id"] for e in ents if matches_q(q, e)}


@SETTINGS
@given(ents=_entity_lists(), geo=geo_queries(), backend=st.sampled_from(sorted(BACKENDS)))
def test_geo_matches_the_reference(ents: list[Entity], geo: GeoQuery, backend: str) -> None:
    got = run(BACKENDS[backend], ents, EntityQuery(geo=geo, limit=1000, count=True))
    assert got == {e["id"] for e in ents if matches_geo(geo, e)}


@settings(max_examples=60, deadline=None)
@given(
    ents=_entity_lists(),
    pattern=st.sampled_from(["/Tokyo/#", "/Tokyo/+", "/Osaka", "/#", "/Tokyo"]),
    backend=st.sampled_from(sorted(BACKENDS)),
)
def test_scope_matches_the_reference(ents: list[Entity], pattern: str, backend: str) -> None:
    node = ScopePattern(tuple(s for s in pattern.split("/") if s))
    got = run(BACKENDS[backend], ents, EntityQuery(scope_q=node, limit=1000, count=True))
    assert got == {e["id"] for e in ents if matches_scope(node, e)}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | WORDS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def wild_instances(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            [
                "Property",
                "Relationship",
                "GeoProperty",
                "VocabProperty",
                "LanguageProperty",
                "JsonProperty",
                "ListProperty",
            ]
        )
    )
    member = {
        "Property": "value",
        "Relationship": "object",
        "GeoProperty": "value",
        "VocabProperty": "vocab",
        "LanguageProperty": "languageMap",
        "JsonProperty": "json",
        "ListProperty": "valueList",
    }[kind]
    inst: dict[str, Any] = {"type": kind, member: draw(JSON)}
    for meta in ("observedAt", "unitCode", "datasetId", "createdAt"):
        if draw(st.booleans()):
            inst[meta] = draw(st.sampled_from(["2026-01-01T00:00:00Z", "CEL", 3, ["CEL", 3]]))
    if depth < 2 and draw(st.booleans()):
        sub = draw(wild_instances(depth + 1))
        inst[T + "sub"] = [sub, draw(wild_instances(depth + 1))] if draw(st.booleans()) else sub
    return inst


@settings(max_examples=300, deadline=None)
@given(
    ent=st.one_of(
        entities(0),
        st.dictionaries(
            st.sampled_from([T + "a", T + "b"]), st.lists(wild_instances(), max_size=3), max_size=2
        ).map(lambda attrs: {"id": "urn:ngsi-ld:E:w", "type": [T + "Thing"], **attrs}),
    )
)
def test_index_rows_walk_equals_their_definition(ent: Entity) -> None:
    """The writer's one-walk index rows are the reference evaluator's candidates."""
    assert sorted(value_rows(ent), key=repr) == sorted(value_rows_reference(ent), key=repr)
