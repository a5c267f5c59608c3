"""NGSI v2 subscriptions in the engine (``broker.core.subscriptions.v2``): the document's
checks, which changes trigger a subscription (``alterationTypes``, ``condition``), the
entity a notification carries and the messages (formats, headers, custom ones)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from broker.api.deps import Hub
from broker.core.subscriptions import v2
from broker.core.subscriptions.payload import Compiled
from broker.core.v2entities import V2Service
from broker.errors import BadRequestData, NotImplementedYet
from broker.model.entity import ENTITY_KEYS, Entity

pytestmark = pytest.mark.anyio

NOW = "2026-04-01T09:00:00.000Z"
LATER = "2026-04-01T09:05:00.000Z"


def body(**notification: Any) -> dict[str, Any]:
    n: dict[str, Any] = {"http": {"url": "http://127.0.0.1:9/受信"}}
    n.update(notification)
    return {
        "description": "多摩川の水位",
        "subject": {"entities": [{"idPattern": "^水位計", "type": "WaterLevel"}]},
        "notification": n,
    }


async def compiled(hub: Hub, doc: dict[str, Any], path: str = "/#") -> Compiled:
    stored = {"id": "0123456789abcdef01234567", v2.V2_KEY: v2.checked(doc), "servicePath": path}
    sub = await hub.subscriptions.compile("komae", stored)
    assert sub.v2 is not None
    return sub


def water(sub: Compiled, level: float, scope: str | None = "/tama", **attrs: Any) -> Entity:
    assert sub.v2 is not None
    v2_body: dict[str, Any] = {
        "id": "水位計-狛江",
        "type": "WaterLevel",
        "level": {"type": "Number", "value": level, "metadata": {"unitCode": {"value": "MTR"}}},
        "name": {"type": "Text", "value": "多摩川 狛江"},
        **attrs,
    }
    return sub.v2.mapper.entity(v2_body, NOW, scope)


def changed(sub: Compiled, ent: Entity, time: str = LATER, **attrs: Any) -> Entity:
    assert sub.v2 is not None
    out = dict(ent)
    for name, raw in attrs.items():
        iri = sub.v2.mapper.expand(name)
        if raw is None:
            out.pop(iri, None)
        else:  # as a v2 update does it: metadata not named are kept
            old = out.get(iri, [None])[0]
            new = sub.v2.mapper.attribute(name, raw, time)
            out[iri] = [V2Service.merge_attr(old, new, override=False)]
    return out


# -- the document ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"notification": {"http": {"url": "http://a"}}}, "no subject"),
        ({**body(), "subject": {"entities": []}}, "empty"),
        ({**body(), "subject": {"entities": [{"type": "T"}]}}, "no id nor idPattern"),
        ({**body(), "subject": {"entities": [{"id": "a", "idPattern": "a"}]}}, "same time"),
        (body(attrsFormat="geojson"), "attrsFormat"),
        (body(covered=True), "covered"),
        (body(attrs=["a"], exceptAttrs=["b"]), "exceptAttrs"),
        ({**body(), "status": "paused"}, "status"),
        ({**body(), "expires": "来年"}, "expires"),
        ({**body(), "description": "<script>"}, "forbidden"),
        ({**body(), "throttling": -1}, "throttling"),
        ({**body(), "日本": 1}, "unrecognized"),
        (
            {
                **body(),
                "subject": {
                    "entities": [{"id": "a"}],
                    "condition": {"alterationTypes": ["anyChange"]},
                },
            },
            "alterationType",
        ),
        (
            {
                **body(),
                "subject": {"entities": [{"id": "a"}], "condition": {"expression": {"q": ">1"}}},
            },
            "in q",
        ),
        (
            {
                "subject": {"entities": [{"id": "a"}]},
                "notification": {"httpCustom": {"url": "http://a", "payload": "x", "json": {}}},
            },
            "only one of payload, json or ngsi",
        ),
        (
            {
                "subject": {"entities": [{"id": "a"}]},
                "notification": {"mqtt": {"url": "mqtt://127.0.0.1:1883/path", "topic": "t"}},
            },
            "path cannot be used",
        ),
        (
            {
                "subject": {"entities": [{"id": "a"}]},
                "notification": {"mqtt": {"url": "mqtt://127.0.0.1", "topic": "a/#"}},
            },
            r"\+ and #",
        ),
        (
            {
                "subject": {"entities": [{"id": "a"}]},
                "notification": {"httpCustom": {"url": "http://a", "method": "FETCH"}},
            },
            "method",
        ),
    ],
)
def test_documents_that_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequestData, match=message):
        v2.checked(doc)


def test_what_is_not_offered_is_501() -> None:
    with pytest.raises(NotImplementedYet, match="Kafka"):
        v2.checked({**body(), "notification": {"kafka": {"url": "kafka://a", "topic": "t"}}})
    with pytest.raises(NotImplementedYet, match="jexl"):
        v2.checked(
            {**body(), "subject": {"entities": [{"id": "a"}], "condition": {"jexlExpression": "a"}}}
        )


def test_a_checked_document_is_normalised() -> None:
    doc = v2.checked({**body(), "expires": "2030-04-01T09:00:00+09:00", "throttling": 5.0})
    assert doc["expires"] == "2030-04-01T00:00:00.000Z"
    assert doc["throttling"] == 5
    assert v2.checked({"status": "inactive"}, partial=True) == {"status": "inactive"}


# -- triggers --------------------------------------------------------------------------------


async def test_default_triggers_are_creation_and_actual_change(hub: Hub) -> None:
    sub = await compiled(hub, body())
    spec = sub.v2
    assert spec is not None
    first = water(sub, 1.5)
    assert spec.alteration(None, first) == ("entityCreate", set(first) - ENTITY_KEYS)
    same = changed(sub, first, level={"type": "Number", "value": 1.5})
    assert spec.alteration(first, same) is None, "rewritten with the same value: no change"
    higher = changed(sub, first, level={"type": "Number", "value": 2.0})
    kind, touched = spec.alteration(first, higher) or ("", set())
    assert kind == "entityChange"
    assert touched == {spec.mapper.expand("level")}
    assert spec.alteration(first, None) is None, "entityDelete is not a default"


async def test_alteration_types_and_condition_attributes(hub: Hub) -> None:
    doc = body()
    doc["subject"]["condition"] = {
        "attrs": ["level"],
        "alterationTypes": ["entityUpdate", "entityDelete"],
    }
    sub = await compiled(hub, doc)
    spec = sub.v2
    assert spec is not None
    first = water(sub, 1.5)
    assert spec.alteration(None, first) is None
    same = changed(sub, first, level={"type": "Number", "value": 1.5})
    assert spec.alteration(first, same) == ("entityUpdate", {spec.mapper.expand("level")})
    renamed = changed(sub, first, name={"type": "Text", "value": "多摩川 和泉"})
    assert spec.alteration(first, renamed) is None, "name is not a condition attribute"
    assert spec.alteration(first, None) is not None
    assert spec.alteration(first, None)[0] == "entityDelete"  # type: ignore[index]


async def test_a_metadata_change_counts_unless_told_otherwise(hub: Hub) -> None:
    first_sub = await compiled(hub, body())
    first = water(first_sub, 1.5)
    centimetres = changed(
        first_sub,
        first,
        level={"type": "Number", "value": 1.5, "metadata": {"unitCode": {"value": "CMT"}}},
    )
    assert centimetres[first_sub.v2.mapper.expand("level")][0]["unitCode"] == "CMT"  # type: ignore[union-attr]
    assert first_sub.v2 is not None
    assert first_sub.v2.alteration(first, centimetres) is not None
    doc = body()
    doc["subject"]["condition"] = {"notifyOnMetadataChange": False}
    sub = await compiled(hub, doc)
    assert sub.v2 is not None
    assert sub.v2.alteration(first, centimetres) is None


async def test_selection_by_pattern_expression_and_service_path(hub: Hub) -> None:
    doc = body()
    doc["subject"] = {
        "entities": [{"idPattern": "狛江", "typePattern": "^Water"}],
        "condition": {
            "expression": {
                "q": "level>2",
                "georel": "near;maxDistance:1000",
                "geometry": "point",
                "coords": "35.63,139.58",
            }
        },
    }
    sub = await compiled(hub, doc, path="/tama/#")
    spec = sub.v2
    assert spec is not None
    here = {"type": "geo:point", "value": "35.631, 139.581"}
    assert spec.selects(water(sub, 1.0))
    assert not spec.selects({**water(sub, 1.0), "id": "水位計-調布"})
    assert spec.change(None, water(sub, 3.0, location=here)) is not None
    assert spec.change(None, water(sub, 1.0, location=here)) is None, "q"
    far = {"type": "geo:point", "value": "35.70, 139.70"}
    assert spec.change(None, water(sub, 3.0, location=far)) is None, "geo-query"
    assert spec.change(None, water(sub, 3.0, scope="/sagami", location=here)) is None, "path"
    assert spec.change(None, water(sub, 3.0, scope="/tama/komae", location=here)) is not None


# -- rendering -------------------------------------------------------------------------------


async def test_attributes_notified(hub: Hub) -> None:
    sub = await compiled(
        hub, body(attrs=["name", "alterationType", "servicePath", "rainfall"], covered=True)
    )
    assert sub.v2 is not None
    item = sub.v2.change(None, water(sub, 1.5))
    assert item is not None
    assert item["entity"] == {
        "id": "水位計-狛江",
        "type": "WaterLevel",
        "name": {"type": "Text", "value": "多摩川 狛江", "metadata": {}},
        "alterationType": {"type": "Text", "value": "entityCreate", "metadata": {}},
        "servicePath": {"type": "Text", "value": "/tama", "metadata": {}},
        "rainfall": {"type": "None", "value": None, "metadata": {}},
    }
    assert item["path"] == "/tama"


async def test_only_changed_attributes_except_attributes_and_builtin_metadata(hub: Hub) -> None:
    sub = await compiled(
        hub,
        body(
            exceptAttrs=["name"],
            onlyChangedAttrs=True,
            metadata=["previousValue", "actionType"],
        ),
    )
    spec = sub.v2
    assert spec is not None
    first = water(sub, 1.5, rainfall={"type": "Number", "value": 0})
    higher = changed(sub, first, level={"type": "Number", "value": 2.0})
    item = spec.change(first, higher)
    assert item is not None
    assert list(item["entity"]) == ["id", "type", "level"]
    assert item["entity"]["level"]["metadata"] == {
        "previousValue": {"type": "Number", "value": 1.5},
        "actionType": {"type": "Text", "value": "update"},
    }


# -- messages --------------------------------------------------------------------------------


async def message(hub: Hub, doc: dict[str, Any], ent: Entity | None = None) -> tuple[Any, ...]:
    sub = await compiled(hub, doc)
    assert sub.v2 is not None
    item = sub.v2.change(None, ent if ent is not None else water(sub, 1.5))
    assert item is not None
    endpoint, raw, headers = sub.v2.message(sub.endpoint, [item])
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = raw.decode()
    return endpoint, parsed, headers


async def test_formats_and_headers(hub: Hub) -> None:
    _, sent, headers = await message(hub, body(attrs=["level", "name"], attrsFormat="values"))
    assert sent == {"subscriptionId": "0123456789abcdef01234567", "data": [[1.5, "多摩川 狛江"]]}
    assert headers["Ngsiv2-AttrsFormat"] == "values"
    assert headers["Fiware-Service"] == "komae"
    assert headers["Fiware-ServicePath"] == "/tama"
    _, sent, _ = await message(hub, body(attrsFormat="simplifiedKeyValues"))
    assert sent == {"id": "水位計-狛江", "type": "WaterLevel", "level": 1.5, "name": "多摩川 狛江"}
    _, sent, headers = await message(hub, body(attrs=["level"], attrsFormat="legacy"))
    element = sent["contextResponses"][0]["contextElement"]
    assert element["attributes"] == [
        {
            "name": "level",
            "type": "Number",
            "value": 1.5,
            "metadatas": [{"name": "unitCode", "type": "Text", "value": "MTR"}],
        }
    ]
    assert (element["id"], element["isPattern"]) == ("水位計-狛江", "false")


async def test_http_custom_notifications(hub: Hub) -> None:
    custom = {
        "url": "http://127.0.0.1:9/水位/${id}",
        "method": "PUT",
        "qs": {"type": "${type}", "m": "${level}"},
        "headers": {"X-Auth": "Basic%20YWJj", "Accept": "", "X-Path": "${servicePath}"},
        "json": {"水位": "${level}", "text": "水位は ${level} m", "nothing": "${rain}"},
    }
    endpoint, sent, headers = await message(hub, {**body(), "notification": {"httpCustom": custom}})
    assert endpoint.method == "PUT"
    assert endpoint.uri == "http://127.0.0.1:9/水位/水位計-狛江?type=WaterLevel&m=1.5"
    assert sent == {"水位": 1.5, "text": "水位は 1.5 m", "nothing": None}
    assert headers["X-Auth"] == "Basic YWJj"
    assert headers["Accept"] == "", "an empty value removes the header"
    assert headers["X-Path"] == "/tama"
    assert headers["Ngsiv2-AttrsFormat"] == "custom"


async def test_text_payloads_no_payload_and_ngsi_patching(hub: Hub) -> None:
    text = {"url": "http://127.0.0.1:9/", "payload": "%E6%B0%B4%E4%BD%8D%3D${level}"}
    _, sent, headers = await message(hub, {**body(), "notification": {"httpCustom": text}})
    assert sent == "水位=1.5"
    assert headers["Content-Type"].startswith("text/plain")
    empty = {"url": "http://127.0.0.1:9/", "payload": None}
    _, sent, _ = await message(hub, {**body(), "notification": {"httpCustom": empty}})
    assert sent == ""
    patch = {
        "url": "http://127.0.0.1:9/",
        "ngsi": {"id": "copy:${id}", "origin": {"value": "${service}", "type": "Text"}},
    }
    _, sent, headers = await message(
        hub, {**body(), "notification": {"httpCustom": patch, "attrs": ["origin", "level"]}}
    )
    entity = sent["data"][0]
    assert entity["id"] == "copy:水位計-狛江"
    assert list(entity) == ["id", "type", "origin", "level"]
    assert entity["origin"] == {"type": "Text", "value": "komae", "metadata": {}}
    assert headers["Ngsiv2-AttrsFormat"] == "normalized"


async def test_mqtt_endpoints(hub: Hub) -> None:
    mqtt = {
        "url": "mqtt://127.0.0.1:1883",
        "topic": "/komae/${type}/${id}",
        "qos": 1,
        "retain": True,
        "user": "市役所",
        "passwd": "p@ss",
    }
    endpoint, sent, _ = await message(hub, {**body(), "notification": {"mqttCustom": mqtt}})
    assert endpoint.uri == "mqtt://%E5%B8%82%E5%BD%B9%E6%89%80:p%40ss@127.0.0.1:1883"
    assert endpoint.topic == "/komae/WaterLevel/水位計-狛江"
    assert (endpoint.raw, endpoint.retain, endpoint.notifier_info) == (
        True,
        True,
        (("MQTT-QoS", "1"),),
    )
    assert sent["data"][0]["id"] == "水位計-狛江"


def test_macros() -> None:
    context = {"id": "E1", "temp": 21.0, "tags": ["a"], "pos": {"lat": 35.6}}
    assert v2.substitute_text("${id}:${temp}:${tags}:${pos.lat}:${none}", context) == (
        'E1:21:["a"]:35.6:'
    )
    assert v2.substitute_json({"t": "${temp}", "l": ["${tags}", "x${id}"]}, context) == {
        "t": 21.0,
        "l": [["a"], "xE1"],
    }
