"""Payload values -> NGSI-LD attributes, per the device's mappings."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.mqtt.mapping import BadValue, attribute, convert, measures
from connectors.mqtt.models import AttributeMapping, Device
from connectors.mqtt.registry import Registry, Resolved, Scope


def device(explicit: bool = False) -> Resolved:
    mappings = {
        "t": AttributeMapping(
            object_id="t",
            name="temperature",
            type="Number",
            metadata={"unitCode": {"value": "CEL"}},
        ),
        "n": AttributeMapping(object_id="n", name="count", type="Integer"),
    }
    return Resolved(
        Scope("komae"),
        "d1",
        "k",
        "urn:ngsi-ld:T:d1",
        "T",
        mappings,
        [],
        set(),
        explicit,
        {"temperature", "count"},
    )


@pytest.mark.parametrize(
    ("type_name", "value", "expected"),
    [
        ("Number", "21.5", {"type": "Property", "value": 21.5}),
        ("Integer", 3.0, {"type": "Property", "value": 3}),
        ("Boolean", "false", {"type": "Property", "value": False}),
        ("Text", 12, {"type": "Property", "value": "12"}),
        (
            "geo:point",
            "35.6,139.5",
            {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [139.5, 35.6]}},
        ),
        (
            "geo:json",
            {"type": "Point", "coordinates": [1, 2]},
            {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1, 2]}},
        ),
        (
            "Relationship",
            "urn:ngsi-ld:Road:1",
            {"type": "Relationship", "object": "urn:ngsi-ld:Road:1"},
        ),
        (
            "DateTime",
            "2024-05-01T10:00:00+09:00",
            {
                "type": "Property",
                "value": {"@type": "DateTime", "@value": "2024-05-01T01:00:00.000Z"},
            },
        ),
        ("Property", {"a": 1}, {"type": "Property", "value": {"a": 1}}),
    ],
)
def test_types(type_name: str, value: object, expected: dict[str, object]) -> None:
    assert attribute(type_name, value, None) == expected


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("Number", "warm"),
        ("Number", True),
        ("Integer", 2.5),
        ("Boolean", "yes"),
        ("geo:point", "91,0"),
        ("geo:json", {"type": "Circle"}),
        ("Relationship", 5),
        ("Number", "nan"),
    ],
)
def test_values_that_do_not_convert(type_name: str, value: object) -> None:
    with pytest.raises(BadValue) as info:
        attribute(type_name, value, None)
    assert info.value.reason == "invalid_value"


def test_measure_with_timestamp_and_bad_value() -> None:
    m = convert(
        device(), {"t": "20", "n": "x", "other": 1, "TimeInstant": "2024-05-01T00:00:00Z"}, 0
    )
    assert m.attrs["temperature"] == {
        "type": "Property",
        "value": 20.0,
        "observedAt": "2024-05-01T00:00:00.000Z",
        "unitCode": "CEL",
    }
    assert "count" not in m.attrs
    assert m.attrs["other"]["value"] == 1
    assert [p.reason for p in m.problems] == ["invalid_value"]
    assert convert(device(explicit=True), {"other": 1, "t": 1}, 0).attrs.keys() == {"temperature"}
    bad = convert(device(), {"t": 1, "TimeInstant": "yesterday"}, 0)
    assert bad.attrs == {}
    assert bad.problems[0].reason == "invalid_timestamp"


def test_payload_shapes() -> None:
    assert list(measures({"a": 1})) == [{"a": 1}]
    assert list(measures([{"a": 1}, {"a": 2}])) == [{"a": 1}, {"a": 2}]
    for bad in ([], [1], "x", 3):
        with pytest.raises(BadValue):
            list(measures(bad))


def test_timestamp_sets_time_instant_to_the_measure_time() -> None:
    stamped = device()
    stamped.timestamp = True
    got = convert(stamped, {"t": 20, "TimeInstant": "2024-05-01T12:00:00+09:00"}, 0.0)
    assert got.attrs["TimeInstant"] == {
        "type": "Property",
        "value": {"@type": "DateTime", "@value": "2024-05-01T03:00:00.000Z"},
        "observedAt": "2024-05-01T03:00:00.000Z",  # so the newest measure's time wins
    }
    assert got.attrs["temperature"]["observedAt"] == "2024-05-01T03:00:00.000Z"
    arrival = convert(stamped, {"n": 1}, 1714532400.0)  # no TimeInstant: the arrival time
    assert arrival.attrs["TimeInstant"]["value"]["@value"] == "2024-05-01T03:00:00.000Z"
    assert "TimeInstant" not in convert(stamped, {"n": "many"}, 0.0).attrs  # nothing stored
    assert "TimeInstant" not in convert(device(), {"t": 20}, 0.0).attrs  # timestamp off


@pytest.mark.parametrize(
    "sent",
    [
        "2024-05-01T03:00:00.123Z",
        "2024-05-01T03:00:59.999Z",
        "2024-12-31T23:59:59.999Z",
        "1969-12-31T23:59:59.001Z",
        "0999-01-01T00:00:00.500Z",
    ],
)
def test_observed_at_keeps_the_milliseconds_a_device_sent(sent: str) -> None:
    got = convert(device(), {"t": 1, "TimeInstant": sent}, 0.0)
    assert got.attrs["temperature"]["observedAt"] == sent


def test_arrival_time_is_written_to_the_millisecond() -> None:
    # microseconds round as datetime rounds them: .9999996 is the next second
    for arrival, stamp in [
        (1714532400.0, "2024-05-01T03:00:00.000Z"),
        (1714532400.0429, "2024-05-01T03:00:00.042Z"),
        (1714532400.9999996, "2024-05-01T03:00:01.000Z"),
        (1714532401.5, "2024-05-01T03:00:01.500Z"),
    ]:
        assert convert(device(), {"t": 1}, arrival).attrs["temperature"]["observedAt"] == stamp


RIVER_GROUP = {
    "apikey": "水位key",
    "entity_type": "水位計",
    "attributes": [
        {"object_id": "l", "name": "水位", "type": "Number"},
        {"object_id": "v", "name": "電圧", "type": "Number"},
    ],
    "static_attributes": [{"name": "河川", "type": "Text", "value": "野川"}],
}


def provisioned(**group: Any) -> Resolved:
    """The device ``計1`` of a group provisioned as ``RIVER_GROUP`` with ``group`` on top."""
    registry = Registry(":memory:")
    try:
        scope = Scope("komae")
        registry.add_groups(scope, [{**RIVER_GROUP, **group}])
        return registry.preview(scope, Device(device_id="計1"))
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("explicit", "measure", "sent", "allowed"),
    [
        # Case 1 (default): "every measure will be propagated to NGSI interface"
        (False, {"l": 1.5, "v": 3.3, "x": "未定義"}, {"水位", "電圧", "x"}, None),
        # Case 2: "should only progress active and static attributes defined in the
        # device or group provision"
        (True, {"l": 1.5, "v": 3.3, "x": "未定義"}, {"水位", "電圧"}, None),
        # Case 3: "just NGSI attributes defined in the array (identified by their
        # attribute names, not by their object_id ...)"; "Not defined measures
        # (object_id) will be dropped, even if they are defined in the explicitAttrs array"
        (
            "['水位', 'x', '河川']",
            {"l": 1.5, "v": 3.3, "x": "未定義"},
            {"水位"},
            {"水位", "x", "河川"},
        ),
        # Case 4: "identified by their attribute names and/or by their object_id"
        ("['水位', {object_id:'v'}]", {"l": 1.5, "v": 3.3}, {"水位", "電圧"}, {"水位", "電圧"}),
        # Case 5: "a JEXL expression resulting in bool or array": true is case 2 ...
        ("l > 1", {"l": 1.5, "x": "未定義"}, {"水位"}, None),
        # ... and false case 1
        ("l > 1", {"l": 0.5, "x": "未定義"}, {"水位", "x"}, None),
    ],
)
def test_explicit_attrs_as_iotagent_node_lib_documents(
    explicit: Any, measure: dict[str, Any], sent: set[str], allowed: set[str] | None
) -> None:
    """iotagent-node-lib doc/api.md, "explicitAttrs", cases 1 to 5 (the static attributes
    an array lets through are filtered with the measure's ``allowed``)."""
    got = convert(provisioned(explicitAttrs=explicit), measure, 1714532400.0)
    assert set(got.attrs) == sent
    assert got.allowed == (None if allowed is None else frozenset(allowed))
    assert not got.problems


def test_an_empty_explicit_attrs_array_sends_no_time_instant() -> None:
    """iotagent-node-lib doc/api.md: "when explicitAttrs is an array or a JEXL expression
    resulting in to Array, if this array is empty then TimeInstant is not propaged to CB"
    (with a non-empty one, it is)."""
    empty = convert(provisioned(explicitAttrs="[]", timestamp=True), {"l": 1.5}, 1714532400.0)
    assert empty.attrs == {}
    kept = convert(provisioned(explicitAttrs="['水位']", timestamp=True), {"l": 1.5}, 1714532400.0)
    assert set(kept.attrs) == {"水位", "TimeInstant"}
