"""OgcService (OGC API - Features, Part 1): collections per entity type, extents and
items with bbox and property filters, over entities in a real SQLite file."""

from __future__ import annotations

import pytest

from broker.api.deps import Hub
from broker.core.ogc import CRS84, OgcService, parse_bbox, parse_items
from broker.errors import BadRequestData, ResourceNotFound
from tests.broker.core.conftest import shelter

pytestmark = pytest.mark.anyio


async def service(hub: Hub) -> OgcService:
    core = await hub.term_map(None)
    for n, capacity in ((1, 120), (2, 300), (50, 80)):  # 50: further east
        await hub.entities.create("", shelter(n, capacity), core)
    return OgcService(hub.entities.store, hub.entities, core)


async def test_a_japanese_type_is_a_collection_with_an_ascii_id(hub: Hub) -> None:
    ogc = await service(hub)
    (col,) = await ogc.collections("")
    assert col.title == "避難所"
    assert col.id.isascii()
    assert col.count == 3
    assert (await ogc.collection(col.id, "")).type_iri == col.type_iri
    with pytest.raises(ResourceNotFound):
        await ogc.collection("公園", "")


async def test_extent_covers_every_feature(hub: Hub) -> None:
    ogc = await service(hub)
    (col,) = await ogc.collections("")
    bbox = (await ogc.info(col)).bbox
    assert bbox is not None
    assert bbox[0] == pytest.approx(139.571)
    assert bbox[2] == pytest.approx(139.62)


async def test_items_within_a_bbox_and_by_property(hub: Hub) -> None:
    ogc = await service(hub)
    (col,) = await ogc.collections("")
    props = ["名称", "収容人数"]
    west = parse_items(
        {"bbox": "139.56,35.62,139.58,35.64"}, props, default_limit=10, max_limit=100
    )
    page = await ogc.items(col, west)
    assert page.matched == 2
    assert sorted(f["properties"]["名称"] for f in page.features) == [
        "狛江第1小学校",
        "狛江第2小学校",
    ]
    by_name = parse_items({"名称": "狛江第50小学校"}, props, default_limit=10, max_limit=100)
    (feature,) = (await ogc.items(col, by_name)).features
    assert feature["geometry"]["type"] == "Point"
    assert feature["properties"]["収容人数"] == 80


def test_items_parameters() -> None:
    req = parse_items({"limit": "5000"}, ["名称"], default_limit=10, max_limit=1000)
    assert req.limit == 1000
    assert req.crs == CRS84
    with pytest.raises(BadRequestData):
        parse_items({"階数": "3"}, ["名称"], default_limit=10, max_limit=100)  # unknown
    with pytest.raises(BadRequestData):
        parse_items({"bbox-crs": CRS84}, [], default_limit=10, max_limit=100)  # no bbox
    with pytest.raises(BadRequestData):
        parse_bbox("139.5,35.6,139.6", CRS84)
    with pytest.raises(BadRequestData):
        parse_bbox("139.5,95,139.6,96", CRS84)  # latitude out of range
