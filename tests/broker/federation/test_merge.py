"""The merge of several sources' views of one entity (broker.federation.merge) held to
its slow reference with Hypothesis, and its rule shown on a case."""

from __future__ import annotations

from functools import reduce
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.federation.merge import merge, merge_all, merge_reference

V = "https://example.org/"
STAMPS = st.sampled_from(
    [None, "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z", "2027-01-01T00:00:00Z"]
)


@st.composite
def instances(draw: Any) -> dict[str, Any]:
    inst: dict[str, Any] = {"type": "Property", "value": draw(st.integers(0, 5))}
    for key in ("observedAt", "modifiedAt"):
        stamp = draw(STAMPS)
        if stamp:
            inst[key] = stamp
    ds = draw(st.sampled_from([None, "urn:ngsi-ld:Dataset:a", "urn:ngsi-ld:Dataset:b"]))
    if ds:
        inst["datasetId"] = ds
    return inst


@st.composite
def views(draw: Any) -> dict[str, Any]:
    ent: dict[str, Any] = {"id": "urn:ngsi-ld:AEDLocation:1"}
    ent["type"] = draw(
        st.lists(st.sampled_from([V + "AED", V + "Facility"]), min_size=1, unique=True)
    )
    if draw(st.booleans()):
        ent["scope"] = draw(
            st.lists(st.sampled_from(["/東京都/狛江市", "/東京都/調布市"]), unique=True)
        )
    for key in ("createdAt", "modifiedAt"):
        stamp = draw(STAMPS)
        if stamp:
            ent[key] = stamp
    for name in draw(st.lists(st.sampled_from([V + "名称", V + "電池残量"]), unique=True)):
        got = draw(st.lists(instances(), min_size=1, max_size=3))
        unique = {i.get("datasetId"): i for i in got}  # one instance per datasetId
        ent[name] = list(unique.values())
    return ent


@settings(max_examples=300, deadline=None)
@given(st.lists(views(), min_size=1, max_size=4))
def test_merge_matches_its_reference(vs: list[dict[str, Any]]) -> None:
    assert reduce(merge, vs) == merge_reference(vs)


def test_newest_wins_per_dataset_and_ties_keep_the_first() -> None:
    local = {
        "id": "urn:ngsi-ld:EvacuationShelter:1",
        "type": [V + "Shelter"],
        V + "収容人数": [
            {"type": "Property", "value": 100, "observedAt": "2025-01-01T00:00:00Z"},
            {
                "type": "Property",
                "value": 7,
                "datasetId": "urn:ngsi-ld:Dataset:都",
                "modifiedAt": "2026-01-01T00:00:00Z",
            },
        ],
    }
    city = {
        "id": "urn:ngsi-ld:EvacuationShelter:1",
        "type": [V + "Shelter", V + "School"],
        V + "収容人数": [
            {"type": "Property", "value": 450, "observedAt": "2026-04-01T00:00:00Z"},
            {
                "type": "Property",
                "value": 8,
                "datasetId": "urn:ngsi-ld:Dataset:都",
                "modifiedAt": "2026-01-01T00:00:00Z",
            },
        ],
    }
    merged = merge_all([[local], [city]])["urn:ngsi-ld:EvacuationShelter:1"]
    assert merged["type"] == [V + "Shelter", V + "School"]
    values = {i.get("datasetId"): i["value"] for i in merged[V + "収容人数"]}
    assert values == {None: 450, "urn:ngsi-ld:Dataset:都": 7}
