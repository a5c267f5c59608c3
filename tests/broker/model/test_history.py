"""What a write adds to the history, durations, and the retention policy (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.errors import BadRequestData
from broker.model.history import Duration, HistoryPolicy, changes, from_us, to_us

NO2 = "https://example.org/NO2"
T0 = to_us("2026-11-01T00:00:00Z")


def entity(**attrs: object) -> dict[str, Any]:
    return {"id": "urn:ngsi-ld:X:1", "type": ["https://example.org/X"], **attrs}


def test_only_changed_instances_are_recorded() -> None:
    a = {"type": "Property", "value": 1, "observedAt": "2026-11-01T00:00:00Z"}
    b = {"type": "Property", "value": 2, "observedAt": "2026-11-01T00:10:00Z"}
    other = {"type": "Property", "value": 5}
    before = entity(**{NO2: [a], "https://example.org/o": [other]})
    after = entity(**{NO2: [b], "https://example.org/o": [other]})
    (row,) = changes(before, after, T0)
    assert (row.attr, row.at, row.instance) == (NO2, to_us(b["observedAt"]), b)  # type: ignore[arg-type]
    assert row.number == 2.0


def test_deleted_attributes_become_null_instances() -> None:
    rel = {"type": "Relationship", "object": "urn:ngsi-ld:Y:1", "datasetId": "urn:d:1"}
    lang = {"type": "LanguageProperty", "languageMap": {"ja": "駅"}}
    before = entity(**{"https://e/r": [rel], "https://e/l": [lang]})
    before["scope"] = ["/Tokyo"]
    rows = {r.attr: r for r in changes(before, None, T0)}
    assert rows["https://e/r"].instance == {
        "type": "Relationship",
        "object": "urn:ngsi-ld:null",
        "datasetId": "urn:d:1",
    }
    assert rows["https://e/l"].instance == {
        "type": "LanguageProperty",
        "languageMap": {"@none": "urn:ngsi-ld:null"},
    }
    assert rows["https://uri.etsi.org/ngsi-ld/scope"].instance == {"type": "Property", "value": []}
    assert all(r.deleted == T0 and r.number is None for r in rows.values())


def test_times_round_trip_without_spurious_fractions() -> None:
    assert from_us(to_us("2020-08-01T12:03:00Z")) == "2020-08-01T12:03:00Z"
    assert from_us(to_us("2020-08-01T21:03:00.5+09:00")) == "2020-08-01T12:03:00.500000Z"
    with pytest.raises(BadRequestData):
        to_us("yesterday")


def test_durations_step_by_calendar_months() -> None:
    month = Duration.parse("P1M")
    start = to_us("2026-01-31T00:00:00Z")
    assert from_us(month.add(start)) == "2026-02-28T00:00:00Z"
    day = Duration.parse("PT24H")
    assert day == Duration.parse("P1D")
    assert len(day.boundaries(T0, T0 + 3 * 86_400_000_000)) == 4
    for bad in ("P", "PT", "1D", "P1H", "P0D"):
        with pytest.raises(BadRequestData):
            Duration.parse(bad)


def test_fixed_period_boundaries_step_like_calendar_ones() -> None:
    """Periods of a fixed length (no months) are computed by arithmetic; they are the
    same boundaries as stepping one period at a time, the last at or past the end."""
    hour = Duration.parse("PT1H")
    step = 3_600_000_000
    for end in (T0, T0 + 1, T0 + step, T0 + 5 * step - 1, T0 + 5 * step, T0 + 5 * step + 1):
        expected = [T0]
        while expected[-1] < end:
            expected.append(expected[-1] + step)
        assert hour.boundaries(T0, end) == expected
    with pytest.raises(BadRequestData):
        hour.boundaries(T0, T0 + 11 * step, limit=10)


def test_retention_rules_most_specific_wins() -> None:
    policy = HistoryPolicy.from_setting(
        {"*": 3650, "Building": 0, "AirQuality@komae": 400, "AirQuality": 30},
        lambda name: f"https://example.org/{name}",
    )
    aq = "https://example.org/AirQuality"
    assert not policy.records("", ["https://example.org/Building"])
    assert policy.records("komae", [aq])
    cut = policy.cutoffs("komae", [aq], T0)[aq]
    assert cut == T0 - 400 * 86_400_000_000
    assert policy.cutoffs("chofu", [aq], T0)[aq] == T0 - 30 * 86_400_000_000
    assert HistoryPolicy().records("", [aq])
