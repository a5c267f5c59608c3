"""Attribute history: what a committed write adds to the temporal evolution of an entity.

Every backend records history inside the transaction of the write itself, so history
and current state never disagree. What to record is decided here, once, as a pure
function of the entity before and after the write: each attribute instance that is
new or differs from before becomes a history row; each instance that disappeared
becomes a deletion row. Times are integers (microseconds since the Unix epoch, UTC),
which sort and bucket cheaply in every store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from broker.errors import BadRequestData
from broker.model.entity import ATTRIBUTE_TYPES, ENTITY_KEYS, NGSI_LD, NULL, Entity, Instance

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INSTANCE_PREFIX = "urn:ngsi-ld:Instance:"
#: The last microsecond datetime can hold (9999-12-31T23:59:59.999999Z).
_LAST_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def to_us(value: str) -> int:
    """An ISO 8601 date-time as microseconds since the epoch (naive times are UTC)."""
    if not isinstance(value, str):
        raise BadRequestData(f"{value!r} is not an ISO 8601 date-time")
    return _to_us(value)


@lru_cache(maxsize=4096)  # measures of one moment share their observedAt
def _to_us(value: str) -> int:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:  # to_us lets only strings through
        raise BadRequestData(f"{value!r} is not an ISO 8601 date-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@lru_cache(maxsize=8192)  # the instances of one write share their createdAt/modifiedAt
def from_us(us: int) -> str:
    """Microseconds since the epoch in ISO form: ``...Z``, fractions only when there are."""
    dt = _EPOCH + timedelta(microseconds=us)
    return dt.isoformat(timespec="auto" if us % 1_000_000 else "seconds").replace("+00:00", "Z")


def instance_id(hid: int) -> str:
    return f"{_INSTANCE_PREFIX}{hid}"


def instance_number(iid: str) -> int | None:
    """The store's row number behind an instanceId it generated, else None."""
    number = iid[len(_INSTANCE_PREFIX) :]
    if iid.startswith(_INSTANCE_PREFIX) and number.isascii() and number.isdigit():
        n = int(number)
        return n if n < 2**63 else None  # none that large was ever generated
    return None


_VALUE_MEMBERS = ("value", "object", "languageMap", "vocab", "json", "valueList", "objectList")


def instance_value(inst: Instance) -> Any:
    for key in _VALUE_MEMBERS:
        if key in inst:
            return inst[key]
    return None


def numeric(value: Any) -> float | None:
    """The number aggregations use for a value (booleans count as 0/1), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


@dataclass(slots=True)
class HistoryRow:
    """One attribute instance of an entity's history, as a store keeps it."""

    attr: str
    dataset_id: str | None
    #: the instance's time: its observedAt, or the write time when it has none
    at: int
    created: int
    modified: int
    #: the instance in internal form (for a deletion: NGSI-LD Null of the attribute's type)
    instance: Instance | None
    #: a client-given instanceId (temporal API); None means the store numbers it
    iid: str | None = None
    #: the store's number for the row (set when read back)
    hid: int = 0
    #: when the attribute was deleted (a deletion record), else None
    deleted: int | None = None

    @property
    def instance_id(self) -> str:
        return self.iid or instance_id(self.hid)

    @property
    def number(self) -> float | None:
        if self.instance is None or self.deleted is not None:
            return None
        return numeric(instance_value(self.instance))

    def stored_value(self) -> tuple[float | None, bytes | None]:
        """What stores keep for aggregations: the number, and the key distinctCount
        uses — a number is its own key, so the key is there only for other values."""
        num = self.number
        if num is not None or self.instance is None or self.deleted is not None:
            return num, None
        return None, orjson.dumps(instance_value(self.instance), option=orjson.OPT_SORT_KEYS)


def row_for(attr: str, inst: Instance, now: int, *, iid: str | None = None) -> HistoryRow:
    kept = {k: v for k, v in inst.items() if k not in ("createdAt", "modifiedAt", "instanceId")}
    observed = inst.get("observedAt")
    return HistoryRow(
        attr=attr,
        dataset_id=inst.get("datasetId"),
        at=to_us(observed) if isinstance(observed, str) else now,
        created=now,
        modified=now,
        instance=kept,
        iid=iid,
    )


def null_instance(inst: Instance) -> Instance:
    """What a deletion records: the attribute's type with NGSI-LD Null as its value."""
    kind = inst.get("type", "Property")
    key = ATTRIBUTE_TYPES.get(kind, "value")
    out: Instance = {"type": kind}
    if kind == "LanguageProperty":
        out[key] = {"@none": NULL}
    elif kind in ("ListProperty", "ListRelationship"):
        out[key] = [NULL]
    else:
        out[key] = NULL
    if "datasetId" in inst:
        out["datasetId"] = inst["datasetId"]
    return out


def deletion_row(attr: str, inst: Instance, now: int) -> HistoryRow:
    """A deletion record; the scope (an entity member) is recorded as an empty list."""
    null = inst if attr == NGSI_LD + "scope" else null_instance(inst)
    return HistoryRow(attr, inst.get("datasetId"), now, now, now, null, deleted=now)


def _instances(ent: Entity | None) -> dict[tuple[str, str | None], Instance]:
    if not ent:
        return {}
    return {
        (k, inst.get("datasetId")): inst
        for k, insts in ent.items()
        if k not in ENTITY_KEYS
        for inst in insts
    }


def _content(inst: Instance) -> Instance:
    """An instance without its system times: writing the same content again is no change."""
    return {k: v for k, v in inst.items() if k not in ("createdAt", "modifiedAt")}


def changes(before: Entity | None, after: Entity | None, now: int) -> list[HistoryRow]:
    """History rows for one committed write of an entity (``after`` None: deleted).

    An instance is recorded when it is new or its content changed; the same content
    written again (a re-import, say) adds nothing."""
    old = _instances(before)
    new = _instances(after)
    rows = [
        row_for(attr, inst, now)
        for (attr, ds), inst in new.items()
        if (attr, ds) not in old or _content(old[(attr, ds)]) != _content(inst)
    ]
    rows.extend(
        deletion_row(attr, inst, now) for (attr, ds), inst in old.items() if (attr, ds) not in new
    )
    if before and before.get("scope") and not (after and after.get("scope")):
        rows.append(deletion_row(NGSI_LD + "scope", {"type": "Property", "value": []}, now))
    return rows


# -- policy -------------------------------------------------------------------------------------


@dataclass(slots=True)
class HistoryPolicy:
    """Which entities keep history, and for how long (per tenant and entity type).

    ``retention`` maps ``(tenant, type)`` (an expanded type IRI; ``"*"`` for any
    tenant or type) to days; 0 days switches history off. The most specific rule wins.
    """

    retention: Mapping[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def from_setting(cls, rules: Mapping[str, float], expand: Any) -> HistoryPolicy:
        """Rules as configured: ``"Type"``, ``"Type@tenant"``, ``"*"`` or ``"*@tenant"``;
        ``expand`` turns a short type name into its IRI."""
        out: dict[tuple[str, str], float] = {}
        for key, days in rules.items():
            name, _, tenant = key.partition("@")
            if days < 0:
                raise ValueError(f"history retention for {key!r} must not be negative")
            out[(tenant or "*", name if name == "*" else expand(name))] = days
        return cls(out)

    def _days(self, tenant: str, entity_type: str) -> float | None:
        for key in ((tenant, entity_type), ("*", entity_type), (tenant, "*"), ("*", "*")):
            if key in self.retention:
                return self.retention[key]
        return None

    def records(self, tenant: str, types: Iterable[str]) -> bool:
        return not self.retention or all(self._days(tenant, t) != 0 for t in types)

    def cutoffs(self, tenant: str, types: Iterable[str], now: int) -> dict[str, int]:
        """Per type: instances older than this (µs) are dropped by the retention job."""
        out = {}
        for t in types:
            days = self._days(tenant, t)
            if days:
                out[t] = now - int(days * 86_400_000_000)
        return out


# -- durations ----------------------------------------------------------------------------------

_DURATION = re.compile(
    r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


@dataclass(frozen=True, slots=True)
class Duration:
    """An ISO 8601 duration: calendar months apart from a fixed number of microseconds."""

    months: int
    us: int

    #: Longest duration accepted: the span of the calendar (years 1 to 9999).
    MAX_YEARS = 10_000

    @classmethod
    def parse(cls, text: str) -> Duration:
        m = _DURATION.match(text) if len(text) <= 64 else None
        if not m:
            raise BadRequestData(f"{text!r} is not an ISO 8601 duration such as P1D or PT1H")
        y, mo, w, d, h, mi, s = m.groups()
        months = int(y or 0) * 12 + int(mo or 0)
        seconds = (
            int(w or 0) * 604_800
            + int(d or 0) * 86_400
            + int(h or 0) * 3600
            + int(mi or 0) * 60
            + float(s or 0)
        )
        if months > cls.MAX_YEARS * 12 or seconds > cls.MAX_YEARS * 366 * 86_400:
            raise BadRequestData(f"duration {text!r} is longer than {cls.MAX_YEARS} years")
        us = round(seconds * 1_000_000)
        if months == 0 and us == 0:
            raise BadRequestData(f"duration {text!r} is zero")
        return cls(months, us)

    def add(self, us: int) -> int:
        """``us`` plus this duration; past the calendar's end, its last microsecond."""
        if self.months:
            dt = _EPOCH + timedelta(microseconds=us)
            total = dt.year * 12 + dt.month - 1 + self.months
            year, month = divmod(total, 12)
            if year > 9999:
                return _LAST_US
            day = min(dt.day, _month_days(year, month + 1))
            dt = dt.replace(year=year, month=month + 1, day=day)
            us = to_us(dt.isoformat())
        return min(us + self.us, _LAST_US)

    def boundaries(self, start: int, end: int, limit: int = 100_000) -> list[int]:
        """Period starts from ``start`` up to (excluding) ``end``, and the first boundary
        at or past ``end``."""
        if not self.months:  # fixed length: arithmetic, not one ``add`` per period
            count = max(0, -(-(end - start) // self.us))
            if count > limit:
                raise BadRequestData("aggrPeriodDuration gives too many periods for the time range")
            return [min(start + k * self.us, _LAST_US) for k in range(count + 1)]
        out = [start]
        while out[-1] < end:
            if len(out) > limit:
                raise BadRequestData("aggrPeriodDuration gives too many periods for the time range")
            out.append(self.add(out[-1]))
        return out


def _month_days(year: int, month: int) -> int:
    if month == 12:
        return 31
    return (datetime(year, month + 1, 1) - datetime(year, month, 1)).days


AGGR_METHODS = ("totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev", "sumsq")


def check_aggr_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in AGGR_METHODS]
    if unknown or not methods:
        raise BadRequestData(
            f"aggrMethods must be among {', '.join(AGGR_METHODS)}; got {', '.join(methods)}"
        )
    return list(dict.fromkeys(methods))
